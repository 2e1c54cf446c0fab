"""Evaluation datasets read in their released layouts.

- PASCAL VOC 2012: ``JPEGImages/<id>.jpg``, palette ("P") PNGs ``SegmentationClass/<id>.png`` (read as indices
  with PIL, 255 = void), lists ``ImageSets/Segmentation/<split>.txt``; SBD ``train_aug`` from
  ``SegmentationClassAug/`` (grey-level index PNGs) with ``ImageSets/Segmentation/train_aug.txt``. List lines of
  two paths (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``, the DeepLab list format) are accepted too.
- Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
  (official) or ``*_gtFine_labelTrainIds.png``, and ``*_gtFine_instanceIds.png`` for iIoU.
- ADE20K SceneParsing: ``ADEChallengeData2016/images/<training|validation>/*.jpg`` and
  ``annotations/<...>/*.png`` (0 = other, 1..150); reduce_zero_label maps 0 -> 255 and v -> v - 1.

Every dataset yields uint8 RGB images and a :class:`Target` whose ``label`` is what its scorer expects
(train ids for VOC / ADE20K, labelIds for Cityscapes). Cityscapes ground truth stays in labelIds because the
official scorer works on them; the model's trainIds are mapped to labelIds instead (``labelTrainIds`` ground
truth is mapped back, ignored -> 0), which gives the same class IoU as scoring in trainIds (tested).
A wrong root or layout raises one :class:`~segconvert.errors.DatasetError` naming what was expected where.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segconvert.errors import DatasetError
from segconvert.eval import palettes
from segconvert.eval.labels import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_NUM_LABEL_IDS,
    IGNORE_INDEX,
    VOC_CLASSES,
    cityscapes_label_to_train_lut,
    cityscapes_train_to_label_lut,
)
from segconvert.eval.metrics import CityscapesScorer, SegScorer

DATASETS = ("voc", "cityscapes", "ade20k")


@dataclass(frozen=True)
class Sample:
    name: str  # identifier used for prediction file names
    image: Path
    label: Path | None
    instance: Path | None = None


@dataclass
class Target:
    label: np.ndarray  # what the dataset's scorer expects
    instance: np.ndarray | None = None


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey images are replicated to three channels."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"cannot read image: {exc}", file=path) from exc


def read_index_png(path: Path, what: str = "label") -> tuple[np.ndarray, str]:
    """Values of a single-channel PNG (palette images give their indices, never colours) and its mode."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "LA"):
                raise DatasetError(
                    f"{what} PNG is a {mode} colour image; expected a single-channel label PNG of class indices "
                    "(palette 'P' or grey 'L'). A colourised label cannot be scored: write the index map instead",
                    file=path,
                )
            arr = np.asarray(im)
    except OSError as exc:
        raise DatasetError(f"cannot read {what} PNG: {exc}", file=path) from exc
    return arr, mode


def _reject(pred: np.ndarray, bad_mask: np.ndarray, message: str, path: Path) -> None:
    """Raise a DatasetError naming the offending ids (``{ids}`` in ``message``) if ``bad_mask`` is set anywhere."""
    bad = np.unique(pred[bad_mask])
    if bad.size:
        raise DatasetError(message.format(ids=bad[:8].tolist()), file=path)


def _read_list(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read image list: {exc}", file=path) from exc
    return [ln.split() for ln in lines if ln.strip()]


class SegDataset:
    """Common interface: ``samples``, ``load_image(i)``, ``load_target(i)``, ``make_scorer(device)``."""

    name: str = ""
    class_names: tuple[str, ...] = ()
    palette: np.ndarray

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.samples: list[Sample] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.samples[i].image)

    def load_target(self, i: int) -> Target:
        raise NotImplementedError

    def make_scorer(self, device: Any = "cpu") -> SegScorer | CityscapesScorer:
        return SegScorer(self.name, self.class_names, device)

    # -- predictions on disk

    def label_png_values(self, pred: np.ndarray) -> np.ndarray:
        """Model-space prediction (train ids) -> the values a released-format prediction PNG holds."""
        return pred.astype(np.uint8)

    def prediction_relpath(self, sample: Sample) -> str:
        return f"{sample.name}.png"

    def prediction_key(self, filename: str) -> str | None:
        """The sample name a prediction file belongs to (``<name>.png``), None for other files."""
        return filename[: -len(".png")]

    def find_predictions(self, pred_dir: Path) -> list[Path]:
        """The prediction PNG of every sample, found anywhere below ``pred_dir`` (exactly one each)."""
        index: dict[str, list[Path]] = {}
        for p in sorted(pred_dir.rglob("*.png")):
            key = self.prediction_key(p.name)
            if key is not None:
                index.setdefault(key, []).append(p)
        out, missing = [], []
        for s in self.samples:
            hits = index.get(s.name, [])
            if len(hits) > 1:
                raise DatasetError(f"several predictions for '{s.name}': {', '.join(map(str, hits[:3]))}")
            if hits:
                out.append(hits[0])
            else:
                missing.append(s.name)
        if missing:
            raise DatasetError(
                f"no prediction for {len(missing)} of {len(self.samples)} images "
                f"(expected a file named {self.prediction_pattern(missing[0])} below the folder)",
                file=pred_dir,
            )
        return out

    def prediction_pattern(self, name: str) -> str:
        return f"{name}.png"

    def score_prediction(self, scorer: Any, pred: np.ndarray, target: Target, pred_ids: str, path: Path) -> None:
        """Check a prediction PNG's values and add it to ``scorer``."""
        mask = (pred >= self.num_classes) & (pred != IGNORE_INDEX)
        _reject(pred, mask, f"prediction contains ids {{ids}} outside 0..{self.num_classes - 1} (255 = void)", path)
        scorer.update(pred, target)


# ------------------------------------------------------------------------------------------------- VOC


class VOCDataset(SegDataset):
    name = "voc"
    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "val") -> None:
        super().__init__(self._resolve(Path(root)), split)
        self.palette = palettes.voc_palette()
        lists = self.root / "ImageSets" / "Segmentation"
        list_file = lists / f"{split}.txt"
        if not list_file.is_file():
            avail = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
            raise DatasetError(
                f"no list for split '{split}': expected {list_file}"
                + (f" (available: {', '.join(avail)})" if avail else ""),
                file=list_file,
            )
        label_dir = self.root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
        for toks in _read_list(list_file):
            if len(toks) >= 2:  # DeepLab list format: image path, label path, relative to the root
                img, lab = self.root / toks[0].lstrip("/"), self.root / toks[1].lstrip("/")
                name = Path(toks[0]).stem
            else:
                name = toks[0]
                img, lab = self.root / "JPEGImages" / f"{name}.jpg", label_dir / f"{name}.png"
            self.samples.append(Sample(name, img, lab if split != "test" else None))
        if not self.samples:
            raise DatasetError("image list is empty", file=list_file)
        first = self.samples[0]
        if not first.image.is_file():
            raise DatasetError(f"image of '{first.name}' not found: expected {first.image}", file=self.root)
        if first.label is not None and not first.label.is_file():
            raise DatasetError(f"label of '{first.name}' not found: expected {first.label}", file=self.root)

    @staticmethod
    def _resolve(root: Path) -> Path:
        for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir() and (cand / "ImageSets" / "Segmentation").is_dir():
                return cand
        raise DatasetError(
            "not a PASCAL VOC 2012 root: expected JPEGImages/, SegmentationClass/ and "
            "ImageSets/Segmentation/<split>.txt in it (or in VOC2012/ or VOCdevkit/VOC2012/ below it)",
            file=root,
        )

    def load_target(self, i: int) -> Target:
        s = self.samples[i]
        if s.label is None:
            raise DatasetError(f"split '{self.split}' has no ground truth", file=self.root)
        arr, mode = read_index_png(s.label, "VOC label")
        if mode not in ("P", "L"):
            raise DatasetError(f"unexpected PNG mode {mode}; expected a palette ('P') PNG", file=s.label)
        bad = np.unique(arr[(arr > 20) & (arr != 255)])
        if bad.size:
            hint = (
                "it looks like a palette PNG converted to grey levels; use the released palette PNG"
                if mode == "L"
                else "not a VOC class-index label"
            )
            raise DatasetError(
                f"{'grey-level' if mode == 'L' else 'palette'} label holds values {bad[:6].tolist()} outside "
                f"0..20/255: {hint}",
                file=s.label,
            )
        return Target(arr.astype(np.uint8))


# ------------------------------------------------------------------------------------------ Cityscapes

_CS_NAME = re.compile(r"^(?P<city>[^_]+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")
_CS_PRED = re.compile(r"^([^_]+_\d+_\d+).*\.png$")


class CityscapesDataset(SegDataset):
    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str | Path, split: str = "val") -> None:
        super().__init__(Path(root), split)
        self.palette = palettes.cityscapes_palette()
        img_dir = self.root / "leftImg8bit" / split
        gt_dir = self.root / "gtFine" / split
        if not img_dir.is_dir():
            raise DatasetError(
                f"not a Cityscapes root: expected {img_dir}/<city>/<city>_<seq>_<frame>_leftImg8bit.png "
                "(and gtFine/<split>/<city>/..._gtFine_labelIds.png)",
                file=self.root,
            )
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"no *_leftImg8bit.png under {img_dir}/<city>/", file=img_dir)
        if split != "test" and not gt_dir.is_dir():
            raise DatasetError(f"ground truth folder missing: expected {gt_dir}/<city>/", file=self.root)
        self._label_kind: str | None = None
        for img in images:
            m = _CS_NAME.match(img.name)
            if not m:
                raise DatasetError("file name does not follow <city>_<seq>_<frame>_leftImg8bit.png", file=img)
            stem = img.name[: -len("_leftImg8bit.png")]
            label = instance = None
            if split != "test":
                base = gt_dir / img.parent.name / stem
                lid = Path(f"{base}_gtFine_labelIds.png")
                tid = Path(f"{base}_gtFine_labelTrainIds.png")
                ins = Path(f"{base}_gtFine_instanceIds.png")
                if lid.is_file():
                    label = lid
                elif tid.is_file():
                    label = tid
                else:
                    raise DatasetError(
                        f"no ground truth for {img.name}: expected {lid.name} (or {tid.name}) in {lid.parent}",
                        file=img,
                    )
                instance = ins if ins.is_file() else None
            self.samples.append(Sample(stem, img, label, instance))
        self._lid_lut = np.array(cityscapes_label_to_train_lut(), dtype=np.uint8)
        self._tid_to_lid = np.array(cityscapes_train_to_label_lut(), dtype=np.uint8)

    def make_scorer(self, device: Any = "cpu") -> CityscapesScorer:
        return CityscapesScorer(device)

    def load_target(self, i: int) -> Target:
        """labelIds (trainId ground truth is mapped back: 255 -> 0 'unlabeled') and instanceIds."""
        s = self.samples[i]
        if s.label is None:
            raise DatasetError("the test split has no ground truth", file=self.root)
        arr, _ = read_index_png(s.label, "Cityscapes label")
        if arr.ndim != 2:
            raise DatasetError("label PNG must be single-channel", file=s.label)
        if s.label.name.endswith("_labelTrainIds.png"):
            bad = np.unique(arr[(arr > 18) & (arr != 255)])
            if bad.size:
                raise DatasetError(f"trainId label holds ids {bad[:6].tolist()} (valid: 0..18, 255)", file=s.label)
            arr = self._tid_to_lid[arr]
        else:
            bad = np.unique(arr[arr >= CITYSCAPES_NUM_LABEL_IDS])
            if bad.size:
                raise DatasetError(f"unknown labelIds {bad[:6].tolist()} (valid: 0..33)", file=s.label)
        inst = None
        if s.instance is not None:
            with Image.open(s.instance) as im:
                inst = np.asarray(im).astype(np.int32)
            if inst.shape != arr.shape:
                raise DatasetError(f"instanceIds size {inst.shape} != label size {arr.shape}", file=s.instance)
        return Target(arr.astype(np.uint8), inst)

    def label_png_values(self, pred: np.ndarray) -> np.ndarray:
        """trainIds -> labelIds, the format of the official evaluator."""
        return self._tid_to_lid[pred.astype(np.uint8)]

    def prediction_relpath(self, sample: Sample) -> str:
        return f"{sample.image.parent.name}/{sample.name}_leftImg8bit.png"

    def prediction_key(self, filename: str) -> str | None:
        """Like the official evaluator: any ``<city>_<seq>_<frame>*.png``."""
        m = _CS_PRED.match(filename)
        return m.group(1) if m else None

    def prediction_pattern(self, name: str) -> str:
        return f"{name}*.png"

    def score_prediction(self, scorer: Any, pred: np.ndarray, target: Target, pred_ids: str, path: Path) -> None:
        """``pred_ids``: 'labelIds' (checked against the trainId mix-up), 'labelIds-forced' (only
        warned about) or 'trainIds'."""
        if pred_ids == "trainIds":
            msg = "prediction holds ids {ids} > 18, which are not trainIds; these look like labelIds: score them "
            _reject(pred, (pred > 18) & (pred != 255), msg + "with --pred-ids labelIds", path)
            scorer.update(pred, target)
            return
        void = np.unique(pred[pred <= 6])
        if void.size:
            msg = (
                f"prediction holds ids {void.tolist()}, which are void labelIds (0-6) that a labelId "
                "prediction practically never contains: these look like trainIds (0-18)"
            )
            if pred_ids == "labelIds":
                raise DatasetError(
                    msg + ". Pass --pred-ids trainIds if they are, or --pred-ids labelIds to score as labelIds",
                    file=path,
                )
            warnings.warn(f"{path}: {msg}; scored as labelIds as requested", stacklevel=2)
        scorer.update_label_ids(pred, target)


# --------------------------------------------------------------------------------------------- ADE20K


class ADE20KDataset(SegDataset):
    name = "ade20k"
    class_names = ADE20K_CLASSES
    _SPLITS = {"val": "validation", "validation": "validation", "train": "training", "training": "training"}

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        folder = self._SPLITS.get(split)
        if folder is None:
            raise DatasetError(f"unknown ADE20K split '{split}' (use val or train)")
        super().__init__(root, split)
        self.palette = palettes.ade20k_palette()
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        if not img_dir.is_dir() or not ann_dir.is_dir():
            raise DatasetError(
                f"not an ADE20K SceneParsing root: expected {img_dir}/*.jpg and {ann_dir}/*.png "
                "(the ADEChallengeData2016 folder or its parent)",
                file=root,
            )
        for img in sorted(img_dir.glob("*.jpg")):
            self.samples.append(Sample(img.stem, img, ann_dir / f"{img.stem}.png"))
        if not self.samples:
            raise DatasetError(f"no *.jpg images in {img_dir}", file=img_dir)
        if not self.samples[0].label.is_file():  # type: ignore[union-attr]
            raise DatasetError(f"annotation missing: expected {self.samples[0].label}", file=ann_dir)

    def load_target(self, i: int) -> Target:
        """reduce_zero_label: 0 (other) -> 255, v -> v - 1."""
        s = self.samples[i]
        arr, _ = read_index_png(s.label, "ADE20K annotation")  # type: ignore[arg-type]
        if arr.ndim != 2:
            raise DatasetError("annotation must be single-channel", file=s.label)
        if (arr == 255).any():
            raise DatasetError(
                "annotation holds 255: it looks already reduced (0..149/255); the released SceneParsing "
                "annotations hold 0 (other) and 1..150, and the reduction is applied exactly once here",
                file=s.label,
            )
        if (arr > 150).any():
            raise DatasetError(f"annotation values up to {int(arr.max())} (valid: 0..150)", file=s.label)
        out = arr.astype(np.int16) - 1
        out[arr == 0] = IGNORE_INDEX
        return Target(out.astype(np.uint8))

    def label_png_values(self, pred: np.ndarray) -> np.ndarray:
        """SceneParsing submission format: class v is written as v + 1 (0 = other)."""
        return pred.astype(np.uint8) + 1

    def score_prediction(self, scorer: Any, pred: np.ndarray, target: Target, pred_ids: str, path: Path) -> None:
        """``pred_ids``: 'one-based' (1..150, the SceneParsing format) or 'zero-based' (0..149)."""
        if pred_ids == "zero-based":
            msg = "prediction holds ids {ids} >= 150: not zero-based; try --pred-ids one-based"
            _reject(pred, (pred >= 150) & (pred != 255), msg, path)
            scorer.update(pred, target)
            return
        _reject(pred, pred > 150, "prediction holds ids {ids} > 150", path)
        if (pred == 0).any():
            warnings.warn(
                f"{path}: one-based prediction holds 0 ('other', never correct); "
                "if the predictions are zero-based pass --pred-ids zero-based",
                stacklevel=2,
            )
        shifted = pred.astype(np.int16) - 1
        shifted[pred == 0] = IGNORE_INDEX
        scorer.update(shifted, target)


def get_dataset(name: str, root: str | Path, split: str | None = None) -> SegDataset:
    """``name`` in voc | cityscapes | ade20k; ``split`` defaults to val."""
    key = name.lower().replace("-", "").replace("_", "")
    table = {"voc": VOCDataset, "voc2012": VOCDataset, "pascalvoc": VOCDataset, "cityscapes": CityscapesDataset}
    table |= {"ade20k": ADE20KDataset, "ade": ADE20KDataset}
    cls = table.get(key)
    if cls is None:
        raise DatasetError(f"unknown dataset '{name}' (choose from {', '.join(DATASETS)})")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset root is not a directory", file=root)
    return cls(root, split or "val")
