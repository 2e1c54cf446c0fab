"""``segconvert recipes``: the training presets, every value with the file it comes from."""

from __future__ import annotations

import json

import click


@click.command("recipes")
@click.argument("name", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Show the values with overrides.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def recipes(name: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """List every training recipe (or NAME only) with its source and every value."""
    from segconvert.train.recipes import get_recipe, list_recipes

    chosen = [get_recipe(name)] if name else list_recipes()
    if overrides and len(chosen) != 1:
        raise click.UsageError("--set needs a recipe NAME")
    payload = []
    for recipe in chosen:
        resolved = recipe.resolve(list(overrides))
        entry = {"name": recipe.name, "description": recipe.description, "source": recipe.source, "values": {}}
        for key, rv in recipe.values.items():
            entry["values"][key] = {"value": resolved.values[key], "source": rv.source}
            if key in resolved.overridden:
                entry["values"][key]["preset"] = rv.value
        payload.append(entry)
    if as_json:
        click.echo(json.dumps(payload if not name else payload[0], indent=1))
        return
    for entry in payload:
        click.echo(f"{entry['name']}: {entry['description']}")
        click.echo(f"  source: {entry['source']}")
        width = max(len(k) for k in entry["values"])
        for key, item in entry["values"].items():
            shown = json.dumps(item["value"])
            if "preset" in item:
                shown += f"  (set; preset {json.dumps(item['preset'])})"
            click.echo(f"  {key:<{width}}  {shown:<34} {item['source']}")
