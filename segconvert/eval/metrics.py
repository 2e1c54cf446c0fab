"""Dataset-level segmentation metrics, accumulated with torch on the inference device.

:class:`ConfusionMatrix` sums one ``bincount`` per image into an (n, n + 1) int64 matrix: rows are ground-truth
classes (pixels whose ground truth is outside ``0..n-1``, e.g. 255, are ignored), columns are predicted classes
plus one "void" column for predictions outside ``0..n-1`` (a void prediction is a false negative of the
ground-truth class and a false positive of nothing). Scores are computed once, from the summed matrix:
IoU_c = TP/(TP + FP + FN), Acc_c = TP/GT_c, aAcc = sum TP / sum GT, mIoU/mAcc = nan-mean over the classes
whose denominator is non-zero (mmseg / cityscapesScripts convention); ``mIoU_all`` counts absent classes as
0 over all n classes (semseg / PSPNet ``eval_acc.m`` convention).

:class:`CityscapesScorer` reproduces the official pixel-level evaluator (cityscapesScripts
``evalPixelLevelSemanticLabeling``): a confusion matrix over labelIds 0..33, class and category IoU with the
rows of ignored ground truth excluded from false positives, and the instance-weighted iIoU (true positives
and false negatives weighted by average class size / instance size, false positives unweighted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segconvert.eval.labels import (
    CITYSCAPES_AVG_CLASS_SIZE,
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_LABELS,
    CITYSCAPES_NUM_LABEL_IDS,
    CITYSCAPES_TRAIN_LABELS,
    cityscapes_train_to_label_lut,
)

# ----------------------------------------------------------------------------------------------- results


@dataclass
class ClassScore:
    name: str
    iou: float
    acc: float
    iiou: float | None = None


@dataclass
class EvalResult:
    """Scores as fractions (0..1); NaN where a class has an empty denominator."""

    dataset: str
    num_images: int
    classes: list[ClassScore]
    mIoU: float
    mAcc: float
    aAcc: float
    mIoU_all: float
    confusion: np.ndarray
    iIoU: float | None = None
    categories: list[ClassScore] | None = None
    category_mIoU: float | None = None
    category_iIoU: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {
            "mIoU": self.mIoU,
            "mAcc": self.mAcc,
            "aAcc": self.aAcc,
            "mIoU_all_classes": self.mIoU_all,
        }
        if self.iIoU is not None:
            out.update(iIoU=self.iIoU, category_mIoU=self.category_mIoU, category_iIoU=self.category_iIoU)
        return out

    def to_json(self, include_confusion: bool = True) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes null."""

        def f(x: float | None) -> float | None:
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

        out: dict[str, Any] = {
            "dataset": self.dataset,
            "num_images": self.num_images,
            "metrics": {k: f(v) for k, v in self.summary().items()},
            "classes": [
                {"name": c.name, "iou": f(c.iou), "acc": f(c.acc)} | ({"iiou": f(c.iiou)} if c.iiou is not None else {})
                for c in self.classes
            ],
        }
        if self.categories is not None:
            out["categories"] = [{"name": c.name, "iou": f(c.iou), "iiou": f(c.iiou)} for c in self.categories]
        out.update(self.info)
        if include_confusion:
            out["confusion_matrix"] = self.confusion.tolist()
        return out


# ----------------------------------------------------------------------------------------- accumulation


def as_tensor(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` (read-only numpy arrays, e.g. decoded PNGs, are copied first)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.require(x, requirements=["W", "C"]))
    return x.to(device)


class ConfusionMatrix:
    """(n, n + 1) int64 confusion matrix on ``device``: rows ground truth, last column = void prediction."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=self.device)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one image. ``pred`` and ``target`` are integer maps of the same shape."""
        pred = as_tensor(pred, self.device)
        target = as_tensor(target, self.device)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth shape {tuple(target.shape)}")
        n = self.num_classes
        dtype = torch.int32 if n < 40000 else torch.int64
        t, p = target.reshape(-1), pred.reshape(-1)
        # clamp: predictions >= n -> void column n; ground truth >= n -> row n, dropped below. Negative values
        # are possible only in signed inputs, which take the slower masked path.
        t = t.to(dtype).clamp_(max=n) if t.dtype == torch.uint8 else torch.where((t >= 0) & (t < n), t, n).to(dtype)
        p = p.to(dtype).clamp_(max=n) if p.dtype == torch.uint8 else torch.where((p >= 0) & (p < n), p, n).to(dtype)
        counts = torch.bincount(t.mul_(n + 1).add_(p), minlength=(n + 1) * (n + 1))[: n * (n + 1)]
        self.matrix += counts.view(n, n + 1)

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def scores_from_confusion(matrix: np.ndarray) -> dict[str, Any]:
    """Per-class IoU / accuracy and the summary scores of an (n, n + 1) confusion matrix."""
    m = np.asarray(matrix, dtype=np.int64)
    n = m.shape[0]
    tp = np.diag(m[:, :n]).astype(np.float64)
    gt = m.sum(axis=1).astype(np.float64)  # includes void predictions
    pred = m[:, :n].sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    iou = _div(tp, union)
    acc = _div(tp, gt)
    total = gt.sum()
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mIoU_all": float(np.nan_to_num(iou, nan=0.0).mean()),
    }


class SegScorer:
    """VOC / ADE20K style scoring over ``num_classes`` train ids (ground truth 255 ignored)."""

    def __init__(self, dataset: str, class_names: tuple[str, ...], device: str | torch.device = "cpu") -> None:
        self.dataset = dataset
        self.class_names = class_names
        self.cm = ConfusionMatrix(len(class_names), device)
        self.num_images = 0

    def update(self, pred: torch.Tensor | np.ndarray, target: Any) -> None:
        self.cm.update(pred, target.label)
        self.num_images += 1

    def result(self) -> EvalResult:
        mat = self.cm.numpy()
        s = scores_from_confusion(mat)
        classes = [ClassScore(name, float(s["iou"][i]), float(s["acc"][i])) for i, name in enumerate(self.class_names)]
        return EvalResult(self.dataset, self.num_images, classes, s["mIoU"], s["mAcc"], s["aAcc"], s["mIoU_all"], mat)


# ------------------------------------------------------------------------------------------- Cityscapes

_BY_ID = {lab.id: lab for lab in CITYSCAPES_LABELS}
_NOT_IGNORED = [lab.id for lab in CITYSCAPES_LABELS if not lab.ignore_in_eval]
_INSTANCE_CLASSES = [lab.name for lab in CITYSCAPES_LABELS if lab.has_instances and not lab.ignore_in_eval]


def _instance_categories() -> dict[str, list[int]]:
    """Categories whose labels (id >= 0) all have instances, with all their labelIds (ignored ones too)."""
    cats: dict[str, list[int]] = {}
    for cat in CITYSCAPES_CATEGORIES:
        labs = [lab for lab in CITYSCAPES_LABELS if lab.category == cat]
        if labs and all(lab.has_instances for lab in labs):
            cats[cat] = [lab.id for lab in labs]
    return cats


_INSTANCE_CATEGORIES = _instance_categories()


def _add_instance(stats: dict[str, Any], size: int, tp: int, weight: float) -> None:
    """One instance of ``size`` pixels, ``tp`` of them predicted right: TP and FN, raw and weighted."""
    stats["tp"] += tp
    stats["fn"] += size - tp
    stats["tpWeighted"] += float(tp) * weight
    stats["fnWeighted"] += float(size - tp) * weight


class CityscapesScorer:
    """The official Cityscapes pixel-level metrics: class/category IoU and iIoU over labelIds."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.cm = ConfusionMatrix(CITYSCAPES_NUM_LABEL_IDS, self.device)
        lut = cityscapes_train_to_label_lut()
        lut[255] = 255  # a void trainId prediction stays void (a false negative), not 'unlabeled'
        self.train_to_label = torch.tensor(lut, dtype=torch.uint8, device=self.device)
        cat_lut = torch.full((256,), -1, dtype=torch.int64)
        for ci, ids in enumerate(_INSTANCE_CATEGORIES.values()):
            cat_lut[ids] = ci
        self.cat_lut = cat_lut.to(self.device)
        zero = {"tp": 0, "tpWeighted": 0.0, "fn": 0, "fnWeighted": 0.0}
        self.inst_classes = {name: dict(zero) for name in _INSTANCE_CLASSES}
        self.inst_categories = {name: dict(zero) for name in _INSTANCE_CATEGORIES}
        self.num_images = 0
        self.images_without_instances = 0

    def update(self, pred: torch.Tensor | np.ndarray, target: Any) -> None:
        """Add one image whose prediction is in trainIds (0..18; anything else is a void prediction)."""
        p = as_tensor(pred, self.device)
        if p.dtype != torch.uint8:
            p = torch.where((p >= 0) & (p < 256), p, 255)
        self.update_label_ids(self.train_to_label[p.long()], target)

    def update_label_ids(self, pred_label_ids: torch.Tensor | np.ndarray, target: Any) -> None:
        """Add one image whose prediction is in labelIds (as the official evaluator expects)."""
        pred = as_tensor(pred_label_ids, self.device)
        gt = as_tensor(target.label, self.device)
        self.cm.update(pred, gt)
        self.num_images += 1
        if target.instance is None:
            self.images_without_instances += 1
            return
        self._add_instances(pred, as_tensor(target.instance, self.device))

    def _add_instances(self, pred: torch.Tensor, inst: torch.Tensor) -> None:
        mask = inst > 1000
        ids = inst[mask].long()
        if ids.numel() == 0:
            return
        p = pred[mask].long().clamp(0, 255)  # ids outside 0..255 fall on 255: no category
        lab = ids // 1000
        bins = int(ids.max()) + 1  # instance ids are labelId * 1000 + k: bincount instead of a sort
        size = torch.bincount(ids, minlength=bins)
        tp = torch.bincount(ids[p == lab], minlength=bins)
        ic = self.cat_lut[lab.clamp(0, 255)]
        cat_tp = torch.bincount(ids[(self.cat_lut[p] == ic) & (ic >= 0)], minlength=bins)
        present = torch.nonzero(size).flatten()  # ascending instance ids, as the official loop
        rows = torch.stack([present, size[present], tp[present], cat_tp[present]]).cpu().tolist()
        self.add_instance_rows(rows)

    def add_instance_rows(self, rows: list[list[int]]) -> None:
        """Accumulate one image's instances: rows [instance ids, sizes, class TPs, category TPs] (in id order)."""
        for inst_id, n, t, ct in zip(*rows, strict=True):
            label = _BY_ID.get(int(inst_id) // 1000)
            if label is None or label.ignore_in_eval or label.name not in self.inst_classes:
                continue
            weight = CITYSCAPES_AVG_CLASS_SIZE[label.name] / float(n)
            _add_instance(self.inst_classes[label.name], n, t, weight)
            if label.category in self.inst_categories:
                _add_instance(self.inst_categories[label.category], n, ct, weight)

    # -- scores, following the official definitions term by term

    def result(self) -> EvalResult:
        m = self.cm.numpy()  # (34, 35)
        have_instances = self.num_images > self.images_without_instances

        def class_iou(lid: int) -> float:
            tp = int(m[lid, lid])
            fn = int(m[lid, :].sum()) - tp
            fp = int(m[[r for r in _NOT_IGNORED if r != lid], lid].sum())
            denom = tp + fp + fn
            return float("nan") if denom == 0 else float(tp) / denom

        def class_iiou(lid: int) -> float:
            name = _BY_ID[lid].name
            if not have_instances or name not in self.inst_classes:
                return float("nan")
            st = self.inst_classes[name]
            fp = int(m[[r for r in _NOT_IGNORED if r != lid], lid].sum())
            denom = st["tpWeighted"] + fp + st["fnWeighted"]
            return float("nan") if denom == 0 else st["tpWeighted"] / denom

        def cat_rows(cat: str) -> list[int]:
            return [r for r in _NOT_IGNORED if _BY_ID[r].category != cat]

        def category_iou(cat: str) -> float:
            ids = [lab.id for lab in CITYSCAPES_LABELS if lab.category == cat and not lab.ignore_in_eval]
            if not ids:
                return float("nan")
            tp = int(m[np.ix_(ids, ids)].sum())
            fn = int(m[ids, :].sum()) - tp
            fp = int(m[np.ix_(cat_rows(cat), ids)].sum())
            denom = tp + fp + fn
            return float("nan") if denom == 0 else float(tp) / denom

        def category_iiou(cat: str) -> float:
            if not have_instances or cat not in self.inst_categories:
                return float("nan")
            st = self.inst_categories[cat]
            fp = int(m[np.ix_(cat_rows(cat), _INSTANCE_CATEGORIES[cat])].sum())
            denom = st["tpWeighted"] + fp + st["fnWeighted"]
            return float("nan") if denom == 0 else st["tpWeighted"] / denom

        def average(values: list[float]) -> float:
            total, count = 0.0, 0
            for v in values:
                if not math.isnan(v):
                    total += v
                    count += 1
            return total / count if count else float("nan")

        classes = []
        for lab in CITYSCAPES_TRAIN_LABELS:
            row = int(m[lab.id, :].sum())
            acc = float(m[lab.id, lab.id]) / row if row else float("nan")
            classes.append(ClassScore(lab.name, class_iou(lab.id), acc, class_iiou(lab.id)))
        categories = [
            ClassScore(cat, category_iou(cat), float("nan"), category_iiou(cat))
            for cat in CITYSCAPES_CATEGORIES
            if not all(lab.ignore_in_eval for lab in CITYSCAPES_LABELS if lab.category == cat)
        ]
        valid_rows = m[_NOT_IGNORED, :]
        total = int(valid_rows.sum())
        correct = int(sum(m[r, r] for r in _NOT_IGNORED))
        ious = [c.iou for c in classes]
        info: dict[str, Any] = {}
        if not have_instances:
            info["notes"] = ["no *_instanceIds.png found: iIoU not computed"]
        elif self.images_without_instances:
            info["notes"] = [f"{self.images_without_instances} images without *_instanceIds.png (iIoU partial)"]
        return EvalResult(
            dataset="cityscapes",
            num_images=self.num_images,
            classes=classes,
            mIoU=average(ious),
            mAcc=average([c.acc for c in classes]),
            aAcc=correct / total if total else float("nan"),
            mIoU_all=float(np.nan_to_num(np.array(ious), nan=0.0).mean()),
            confusion=m,
            iIoU=average([c.iiou for c in classes if c.iiou is not None]),
            categories=categories,
            category_mIoU=average([c.iou for c in categories]),
            category_iIoU=average([c.iiou for c in categories if c.iiou is not None]),
            info=info,
        )
