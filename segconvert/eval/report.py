"""Text reports: per-class tables in the cityscapesScripts style and one summary line."""

from __future__ import annotations

import json
import math
from typing import Any

from segconvert.eval.metrics import EvalResult


def _v(x: float | None) -> str:
    """A fraction as a percentage (the unit of every score segconvert prints), 6 characters wide."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "   nan"
    return f"{100 * x:>6.2f}"


def class_table(result: EvalResult) -> str:
    """``classes          IoU%     nIoU%      Acc%`` (nIoU only for Cityscapes), then the score average; in percent
    like :func:`summary_line`."""
    has_inst = result.iIoU is not None
    head = "classes          IoU%     nIoU%      Acc%" if has_inst else "classes          IoU%      Acc%"
    lines = [head, "-" * len(head)]
    for c in result.classes:
        name = c.name if len(c.name) <= 14 else c.name[:14]
        cells = [_v(c.iou)] + ([_v(c.iiou)] if has_inst else []) + [_v(c.acc)]
        lines.append(f"{name:<14}: " + "    ".join(cells))
    lines.append("-" * len(head))
    avg = [_v(result.mIoU)] + ([_v(result.iIoU)] if has_inst else []) + [_v(result.mAcc)]
    lines.append("Score Average : " + "    ".join(avg))
    lines.append("-" * len(head))
    if result.categories is not None:
        lines += ["", "categories       IoU%     nIoU%", "-" * 32]
        for c in result.categories:
            lines.append(f"{c.name:<14}: {_v(c.iou)}    {_v(c.iiou)}")
        lines.append("-" * 32)
        lines.append(f"Score Average : {_v(result.category_mIoU)}    {_v(result.category_iIoU)}")
        lines.append("-" * 32)
    return "\n".join(lines)


def summary_line(result: EvalResult) -> str:
    """``mIoU 79.70  mAcc 86.12  aAcc 96.38  [iIoU ..]  (500 images, protocol ...)`` in percent."""

    def pct(x: float | None) -> str:
        return "nan" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    parts = [f"mIoU {pct(result.mIoU)}", f"mAcc {pct(result.mAcc)}", f"aAcc {pct(result.aAcc)}"]
    if result.iIoU is not None:
        parts += [f"iIoU {pct(result.iIoU)}", f"cat-IoU {pct(result.category_mIoU)}"]
    if abs(result.mIoU_all - result.mIoU) > 1e-12 and not math.isnan(result.mIoU):
        parts.append(f"mIoU(all {len(result.classes)} classes, absent=0) {pct(result.mIoU_all)}")
    where = [f"{result.num_images} images", result.dataset, str(result.info.get("split", ""))]
    proto = result.info.get("protocol")
    if isinstance(proto, dict):
        desc = proto.get("name", "")
        scales = proto.get("scales", [1.0])
        desc += " ss" if list(scales) == [1.0] else f" scales={','.join(f'{s:g}' for s in scales)}"
        if proto.get("flip"):
            desc += "+flip"
        where.append(f"protocol {desc}")
    timing = result.info.get("timing")
    if isinstance(timing, dict) and timing.get("images_per_second"):
        where.append(f"{timing['images_per_second']:.2f} img/s")
    return "  ".join(parts) + "  (" + ", ".join(w for w in where if w) + ")"


def to_json_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
