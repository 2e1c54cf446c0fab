"""The checkpoint zoo: released files, their architecture and preprocessing, and the published scores.

The data lives in :mod:`segconvert.weights.zoo_manifest`. Each published score carries its full setting
(split, ss/ms scales, flip, CRF, protocol, source) so that ``segconvert reproduce`` compares like with like and
refuses the known traps (test-server numbers, CRF numbers, per-image averages).
"""

from __future__ import annotations

import copy
from typing import Any

from segconvert.errors import SegconvertError

ENTRY_KEYS = (
    "name", "source_project", "format", "files", "weights_file", "arch", "config", "dataset", "num_classes",
    "classes", "input_size", "preprocessing", "protocol", "scores", "notes",
)  # fmt: skip
SCORE_KEYS = ("metric", "value", "split", "setting", "scales", "flip", "crf", "protocol", "source", "comparable")


class ZooError(SegconvertError):
    """Unknown zoo entry or no comparable published score."""


def entries() -> list[dict[str, Any]]:
    """All manifest entries (deep copies)."""
    from segconvert.weights.zoo_manifest import ZOO

    return copy.deepcopy(ZOO)


def names() -> list[str]:
    return [e["name"] for e in entries()]


def get_entry(name: str) -> dict[str, Any]:
    for e in entries():
        if e["name"] == name:
            return e
    raise ZooError(f"unknown zoo entry '{name}' (see `segconvert zoo`; known: {', '.join(names())})")


def setting_of(scales: tuple[float, ...] | list[float]) -> str:
    s = [float(v) for v in scales]
    if s == [1.0]:
        return "ss"
    if s == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]:
        return "ms"
    return "custom"


def split_scores(
    entry: dict[str, Any], *, protocol: str, setting: str, flip: bool, split: str = "val"
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(comparable scores, [(other score, why it is not comparable to this run)])."""
    same, other = [], []
    for s in entry["scores"]:
        why = None
        if not s["comparable"]:
            why = s.get("note") or "marked not comparable"
        elif s["split"] != split:
            why = f"measured on {s['split']}, this run is {split}"
        elif s["protocol"] != protocol:
            why = f"protocol {s['protocol']}, this run {protocol}"
        elif s["setting"] != setting:
            why = f"{s['setting']}, this run {setting}"
        elif bool(s["flip"]) != bool(flip):
            why = f"flip={s['flip']}, this run flip={flip}"
        elif s["crf"]:
            why = "includes CRF"
        if why is None:
            same.append(s)
        else:
            other.append((s, why))
    return same, other


def validate(entry: dict[str, Any]) -> list[str]:
    """Schema problems of one entry (empty when valid)."""
    problems = [f"missing key {k!r}" for k in ENTRY_KEYS if k not in entry]
    for i, s in enumerate(entry.get("scores", [])):
        problems += [f"score {i}: missing {k!r}" for k in SCORE_KEYS if k not in s]
        if s.get("comparable") and (s.get("split") != "val" or s.get("crf")):
            problems.append(f"score {i}: a {s.get('split')}/crf={s.get('crf')} number cannot be comparable")
    prep = entry.get("preprocessing") or {}
    if prep and (prep.get("channel_order") not in ("RGB", "BGR") or len(prep.get("mean", [])) != 3):
        problems.append("preprocessing needs channel_order RGB|BGR and 3 means")
    for f in entry.get("files", []):
        if "name" not in f or "checksums" not in f:
            problems.append(f"file entry {f} needs 'name' and 'checksums'")
    return problems


def zoo_table() -> str:
    """One line per entry and one indented line per published score."""
    lines = []
    width = max(len(n) for n in names())
    for e in entries():
        proto = e["protocol"]["name"] if e["protocol"] else "-"
        lines.append(
            f"{e['name']:<{width}} {e['arch']:<20} {str(e['dataset'] or '-'):<11} protocol {proto:<12} "
            f"files: {', '.join(f['name'].split('/')[-1] for f in e['files'][:2])}"
        )
        for s in e["scores"]:
            flag = "" if s["comparable"] else "  [not comparable]"
            extra = " crf" if s["crf"] else ""
            flip = "+flip" if s["flip"] else ""
            lines.append(
                f"    {s['metric']:<5} {s['value']:>6.2f}  {s['split']:<5} {s['setting']}{flip}{extra} "
                f"({s['protocol']}; {s['source']}){flag}"
            )
    return "\n".join(lines)
