"""Training recipes: presets of the released solver + train-net values, each value with the file it comes from.

>>> r = get_recipe("deeplabv2-voc12").resolve(["solver.max_iter=100"])
>>> r.values["solver.base_lr"], r.overridden
(0.00025, {'solver.max_iter': (20000, 100)})

Keys are ``solver.*`` (SolverParameter fields), ``data.*`` (ImageSegData ``transform_param`` /
``image_data_param``), ``model.*`` (the named model's config), ``params.*`` (per-parameter lr/decay
multipliers), ``init.*`` (classifier filler) and ``run.*`` (segconvert's own run settings).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from segconvert.errors import SegconvertError

__all__ = ["RecipeValue", "Recipe", "ResolvedRecipe", "RECIPES", "get_recipe", "list_recipes", "RecipeError"]


class RecipeError(SegconvertError):
    """An unknown recipe, key, or a ``--set`` value of the wrong type."""


@dataclass(frozen=True)
class RecipeValue:
    value: Any
    source: str  # "<file>: <field>" the value is read from


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    source: str  # repository@commit the files are in
    values: dict[str, RecipeValue]

    def resolve(self, overrides: list[str] | dict[str, Any] | None = None) -> ResolvedRecipe:
        """The values with ``key=value`` overrides applied (each parsed as JSON, else kept as a string,
        and checked against the preset's type)."""
        values = {k: copy.deepcopy(v.value) for k, v in self.values.items()}
        changed: dict[str, tuple[Any, Any]] = {}
        items = overrides.items() if isinstance(overrides, dict) else (_split(s) for s in overrides or [])
        for key, raw in items:
            if key not in values:
                close = [k for k in values if k.split(".")[-1] == key.split(".")[-1]]
                hint = f"; did you mean {close[0]}?" if close else f" (see `segconvert recipes {self.name}`)"
                raise RecipeError(f"recipe {self.name} has no key {key!r}{hint}", key=key)
            new = _coerce(key, raw, values[key])
            changed[key] = (values[key], new)
            values[key] = new
        return ResolvedRecipe(self, values, changed)


@dataclass
class ResolvedRecipe:
    recipe: Recipe
    values: dict[str, Any]
    overridden: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, prefix: str) -> dict[str, Any]:
        """``{"base_lr": ..}`` for ``prefix="solver"``."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.values.items() if k.startswith(p)}

    def to_json(self) -> dict[str, Any]:
        """What a run records: the recipe, its source, the final values and what was overridden."""
        return {
            "name": self.recipe.name,
            "source": self.recipe.source,
            "values": dict(sorted(self.values.items())),
            "overridden": {k: {"preset": a, "used": b} for k, (a, b) in sorted(self.overridden.items())},
        }

    def solver_text(self, net_name: str | None = None) -> str:
        """A ``solver.prototxt`` with the ``solver.*`` values (an inline, empty train net named after the
        recipe: the recipe's model is built in Python)."""
        lines = [f'net_param {{ name: "{net_name or self.recipe.name}" }}']
        for key, value in self.section("solver").items():
            if isinstance(value, str):
                lines.append(f'{key}: "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key}: {'true' if value else 'false'}")
            elif isinstance(value, list):
                lines.extend(f"{key}: {v}" for v in value)
            else:
                lines.append(f"{key}: {value!r}")
        return "\n".join(lines) + "\n"


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set takes key=value, got {item!r}")
    return key.strip(), value.strip()


def _coerce(key: str, raw: Any, old: Any) -> Any:
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(old, bool) and raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        if isinstance(old, list) and isinstance(value, (int, float)) and "," not in raw:
            value = [value]
        elif isinstance(old, list) and isinstance(value, str):
            try:
                value = [json.loads(v) for v in raw.split(",")]
            except json.JSONDecodeError:
                value = raw.split(",")
    ok = (
        (isinstance(old, bool) and isinstance(value, bool))
        or (
            isinstance(old, int)
            and not isinstance(old, bool)
            and isinstance(value, int)
            and not isinstance(value, bool)
        )
        or (isinstance(old, float) and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (isinstance(old, str) and isinstance(value, str))
        or (isinstance(old, list) and isinstance(value, list))
        or old is None
    )
    if not ok:
        raise RecipeError(f"--set {key}={raw}: expected a {type(old).__name__} like {old!r}", key=key)
    return float(value) if isinstance(old, float) else value


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> None:
    RECIPES[recipe.name] = recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


def list_recipes() -> list[Recipe]:
    return [RECIPES[k] for k in sorted(RECIPES)]


def _deeplabv2_voc12() -> Recipe:
    repo = "talent518/deeplab-public-ver2@51750fa"
    solver = "exper/voc12/config/resnet101/solver.prototxt"
    net = "exper/voc12/config/resnet101/train.prototxt"
    run = "exper/run_pascal.sh"
    proto = "src/caffe/proto/caffe.proto"
    v = RecipeValue
    values = {
        "solver.type": v("SGD", f"{solver}: no type (caffe.proto default SGD)"),
        "solver.base_lr": v(2.5e-4, f"{solver}: base_lr"),
        "solver.lr_policy": v("poly", f"{solver}: lr_policy"),
        "solver.power": v(0.9, f"{solver}: power"),
        "solver.momentum": v(0.9, f"{solver}: momentum"),
        "solver.weight_decay": v(5e-4, f"{solver}: weight_decay"),
        "solver.iter_size": v(10, f"{solver}: iter_size"),
        "solver.max_iter": v(20000, f"{solver}: max_iter"),
        "solver.average_loss": v(20, f"{solver}: average_loss"),
        "solver.display": v(20, f"{solver}: display"),
        "solver.snapshot": v(10000, f"{solver}: snapshot"),
        "data.batch_size": v(1, f"{net}: layer data image_data_param.batch_size"),
        "data.shuffle": v(True, f"{net}: layer data image_data_param.shuffle"),
        "data.crop_size": v(321, f"{net}: layer data transform_param.crop_size"),
        "data.mean_value": v([104.008, 116.669, 122.675], f"{net}: layer data transform_param.mean_value (BGR)"),
        "data.scale_factors": v([0.5, 0.75, 1.0, 1.25, 1.5], f"{net}: layer data transform_param.scale_factors"),
        "data.mirror": v(True, f"{net}: layer data transform_param.mirror"),
        "data.ignore_label": v(255, f"{proto}: ImageDataParameter.ignore_label default; {net}: loss_param"),
        "model.arch": v("deeplabv2_resnet101", f"{net}: ResNet-101 + ASPP fc1_voc12_c0..c3, MSC branches"),
        "model.depth": v(101, f"{net}: res2a..res5c, 23 blocks in res4 (ResNet-101)"),
        "model.width_divisor": v(1, "segconvert: 1 = the released widths; n divides every backbone width (tests, CPU)"),
        "model.msc": v(True, f"{net}: data_res075 / data_res05 branches, fc_fusion (Eltwise MAX)"),
        "model.num_classes": v(21, f"{run}: NUM_LABELS=21 (voc12)"),
        "model.aspp_rates": v([6, 12, 18, 24], f"{net}: fc1_voc12_c0..c3 convolution_param.dilation"),
        "model.norm": v("frozen", f"{net}: BatchNorm use_global_stats true, param lr_mult 0; Scale lr_mult 0"),
        "params.backbone.lr_mult": v(1.0, f"{net}: conv1..res5c param lr_mult 1"),
        "params.backbone.decay_mult": v(1.0, f"{net}: conv1..res5c param decay_mult 1"),
        "params.head_weight.lr_mult": v(10.0, f"{net}: fc1_voc12_c* param[0] lr_mult 10"),
        "params.head_weight.decay_mult": v(1.0, f"{net}: fc1_voc12_c* param[0] decay_mult 1"),
        "params.head_bias.lr_mult": v(20.0, f"{net}: fc1_voc12_c* param[1] lr_mult 20"),
        "params.head_bias.decay_mult": v(0.0, f"{net}: fc1_voc12_c* param[1] decay_mult 0"),
        "init.classifier_std": v(0.01, f"{net}: fc1_voc12_c* weight_filler gaussian std 0.01"),
        "init.classifier_bias": v(0.0, f"{net}: fc1_voc12_c* bias_filler constant 0"),
        "loss.ignore_label": v(255, f"{net}: loss, loss_res1, loss_res075, loss_res05 loss_param.ignore_label"),
        "run.seed": v(0, "segconvert: the released solver sets no random_seed (Caffe draws one); fixed here"),
        "run.num_workers": v(0, "segconvert: data loader processes (the result does not depend on it)"),
        "run.checkpoint_every": v(1000, "segconvert: full-state checkpoint interval (iterations)"),
        "run.keep_checkpoints": v(2, "segconvert: full-state checkpoints kept"),
    }
    return Recipe(
        "deeplabv2-voc12",
        "DeepLab-v2 ResNet-101 MSC on PASCAL VOC 2012 train_aug, from the COCO-pretrained init (Chen et al. 2016)",
        repo,
        values,
    )


register_recipe(_deeplabv2_voc12())


def _register_pspnet() -> None:
    from .pspnet_presets import pspnet_recipes  # the PSPNet presets (issue 12); their own module

    for r in pspnet_recipes():
        register_recipe(r)


_register_pspnet()
