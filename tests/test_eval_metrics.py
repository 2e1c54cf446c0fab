"""Metrics: dataset-level confusion matrix, nan-mean, void predictions, and the Cityscapes evaluator.

The Cityscapes numbers are checked against cityscapesScripts' own evaluator on the same files (parity extra)
and against an independent per-pixel implementation written here (no confusion matrix).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segconvert.eval.datasets import Target
from segconvert.eval.labels import (
    CITYSCAPES_AVG_CLASS_SIZE,
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_LABELS,
    cityscapes_label_to_train_lut,
)
from segconvert.eval.metrics import CityscapesScorer, ConfusionMatrix, SegScorer, scores_from_confusion

# ------------------------------------------------------------------------------------- generic metrics


def _score(pairs, n):
    s = SegScorer("t", tuple(f"c{i}" for i in range(n)))
    for pred, gt in pairs:
        s.update(torch.tensor(pred), Target(np.array(gt)))
    return s.result()


def test_dataset_level_not_per_image():
    """Pitfall #20: two images with different classes; dataset IoU by hand, != per-image average."""
    a = ([[0, 1], [1, 1]], [[0, 0], [1, 1]])
    b = ([[2, 2], [2, 0]], [[2, 2], [2, 2]])
    r = _score([a, b], 3)
    # class 0: TP 1, FN 1, FP 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 3, FN 1 -> 3/4
    assert [c.iou for c in r.classes] == pytest.approx([1 / 3, 2 / 3, 3 / 4], abs=1e-15)
    assert r.mIoU == pytest.approx((1 / 3 + 2 / 3 + 3 / 4) / 3, abs=1e-15)
    per_image = np.mean([_score([a], 3).mIoU, _score([b], 3).mIoU])
    assert abs(per_image - r.mIoU) > 0.05
    assert r.aAcc == pytest.approx(6 / 8)
    assert r.mAcc == pytest.approx((1 / 2 + 1 + 3 / 4) / 3)


def test_absent_class_nanmean_and_mean_all():
    """Pitfall #21: a class absent from GT and predictions is skipped by mIoU, counted as 0 by mIoU_all."""
    a = ([[0, 1], [1, 1]], [[0, 0], [1, 1]])
    b = ([[2, 2], [2, 0]], [[2, 2], [2, 2]])
    r = _score([a, b], 4)
    assert math.isnan(r.classes[3].iou) and math.isnan(r.classes[3].acc)
    assert r.mIoU == pytest.approx(1.75 / 3)
    assert r.mIoU_all == pytest.approx(1.75 / 4)


def test_ignore_and_void_prediction():
    """GT 255 is ignored entirely; a prediction outside 0..n-1 is a false negative and no false positive."""
    r = _score([([[0, 255], [9, 1]], [[0, 0], [255, 1]])], 2)
    # class 0: TP 1, FN 1 (void prediction 255); class 1: TP 1; the GT-255 pixel (pred 9) is ignored
    assert r.classes[0].iou == pytest.approx(0.5)
    assert r.classes[1].iou == pytest.approx(1.0)
    assert r.confusion.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_confusion_matches_numpy_reference_random():
    rng = np.random.default_rng(0)
    n = 7
    cm = ConfusionMatrix(n)
    ref = np.zeros((n, n + 1), dtype=np.int64)
    for _ in range(5):
        gt = rng.integers(0, n + 2, size=(31, 17))
        gt[gt >= n] = 255
        pred = rng.integers(0, n + 1, size=(31, 17))
        cm.update(torch.tensor(pred), torch.tensor(gt))
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):  # independent: pixel loop
            if g < n:
                ref[g, p if p < n else n] += 1
    assert np.array_equal(cm.numpy(), ref)
    s = scores_from_confusion(ref)
    for c in range(n):
        tp = ref[c, c]
        union = ref[c].sum() + ref[:, c].sum() - tp
        assert s["iou"][c] == pytest.approx(tp / union)


def test_confusion_accumulates_on_given_device():
    cm = ConfusionMatrix(3, device="cpu")
    assert cm.matrix.device.type == "cpu" and cm.matrix.dtype == torch.int64
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        g = ConfusionMatrix(3, device="cuda")
        g.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long))
        assert g.matrix.device.type == "cuda" and int(g.matrix[0, 0]) == 16


# ---------------------------------------------------------------------------------------- Cityscapes

# The benchmark's facts, written out here from the Cityscapes label definition so that the reference below
# shares no table with segconvert (the parity test checks segconvert's table against cityscapesScripts):
# categories by labelId, the 19 evaluated labelIds and their names, instance classes and iIoU weights.
REF_CATEGORY = {i: "void" for i in range(7)} | {i: "flat" for i in (7, 8, 9, 10)}
REF_CATEGORY |= {i: "construction" for i in range(11, 17)} | {i: "object" for i in range(17, 21)}
REF_CATEGORY |= {21: "nature", 22: "nature", 23: "sky", 24: "human", 25: "human"} | {
    i: "vehicle" for i in range(26, 34)
}
REF_EVALUATED = {
    7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole", 19: "traffic light",
    20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car",
    27: "truck", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle",
}  # fmt: skip
REF_HAS_INSTANCES = set(range(24, 34))
REF_AVG_SIZE = {
    24: 3462.4756337644, 25: 3930.4788056518, 26: 12794.0202738185, 27: 27855.1264367816, 28: 35732.1511111111,
    29: 36771.8241758242, 30: 16926.9763313609, 31: 67583.7075812274, 32: 6298.7200839748, 33: 4672.3249222261,
}  # fmt: skip


def make_cityscapes_pair(rng: np.random.Generator, h: int = 48, w: int = 96):
    """Blocky labelIds GT with instances (incl. caravan/trailer and 'group' pixels) and a noisy prediction."""
    gt = np.zeros((h, w), dtype=np.uint8)
    inst = np.zeros((h, w), dtype=np.uint16)
    counter: dict[int, int] = {}
    for y in range(0, h, 8):
        for x in range(0, w, 12):
            lid = int(rng.integers(0, 34))
            gt[y : y + 8, x : x + 12] = lid
            if lid in REF_HAS_INSTANCES and rng.random() < 0.8:
                k = counter.get(lid, 0)
                counter[lid] = k + 1
                inst[y : y + 8, x : x + 12] = lid * 1000 + k
            else:
                inst[y : y + 8, x : x + 12] = lid  # stuff / group pixels carry their labelId
    pred = gt.copy()
    noise = rng.random((h, w)) < 0.35
    pred[noise] = rng.integers(0, 34, size=int(noise.sum()))
    vehicle = rng.random((h, w)) < 0.05  # caravan / trailer predictions count for the vehicle category
    pred[vehicle] = rng.choice([29, 30], size=int(vehicle.sum()))
    return gt, inst, pred


def independent_cityscapes(pairs):
    """Per-pixel definitions of the official metrics, written from the benchmark's description (no matrix)."""
    not_ignored = list(REF_EVALUATED)
    valid = [np.isin(gt, not_ignored) for gt, _, _ in pairs]
    out = {"class": {}, "class_inst": {}, "cat": {}, "cat_inst": {}}

    def weighted(c_ids, hit_ids):
        """Instance-weighted TP and FN over the instances of labelIds ``c_ids``; a hit predicts ``hit_ids``."""
        tpw = fnw = 0.0
        for _g, ins, p in pairs:
            for iid in np.unique(ins[ins > 1000]):
                if iid // 1000 not in c_ids or iid // 1000 not in REF_EVALUATED:
                    continue
                m = ins == iid
                wgt = REF_AVG_SIZE[int(iid) // 1000] / m.sum()
                tpw += np.sum(np.isin(p[m], hit_ids)) * wgt
                fnw += np.sum(~np.isin(p[m], hit_ids)) * wgt
        return tpw, fnw

    for c, name in REF_EVALUATED.items():
        tp = sum(int(np.sum((g == c) & (p == c))) for g, _, p in pairs)
        fn = sum(int(np.sum((g == c) & (p != c))) for g, _, p in pairs)
        fp = sum(int(np.sum((p == c) & (g != c) & v)) for (g, _, p), v in zip(pairs, valid, strict=True))
        out["class"][name] = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        if c in REF_HAS_INSTANCES:
            tpw, fnw = weighted([c], [c])
            out["class_inst"][name] = tpw / (tpw + fp + fnw) if tpw + fp + fnw else float("nan")
    for cat in ("flat", "construction", "object", "nature", "sky", "human", "vehicle"):
        all_ids = [i for i, k in REF_CATEGORY.items() if k == cat]
        ids = [i for i in all_ids if i in REF_EVALUATED]
        tp = sum(int(np.sum(np.isin(g, ids) & np.isin(p, ids))) for g, _, p in pairs)
        fn = sum(int(np.sum(np.isin(g, ids) & ~np.isin(p, ids))) for g, _, p in pairs)
        other = [i for i in not_ignored if REF_CATEGORY[i] != cat]
        fp = sum(int(np.sum(np.isin(g, other) & np.isin(p, ids))) for g, _, p in pairs)
        out["cat"][cat] = tp / (tp + fp + fn)
        if all(i in REF_HAS_INSTANCES for i in all_ids):  # human, vehicle: every label has instances
            fp_i = sum(int(np.sum(np.isin(g, other) & np.isin(p, all_ids))) for g, _, p in pairs)
            tpw, fnw = weighted(all_ids, all_ids)
            out["cat_inst"][cat] = tpw / (tpw + fp_i + fnw)
    return out


def _nanmean(d):
    v = [x for x in d.values() if not math.isnan(x)]
    return sum(v) / len(v)


@pytest.fixture(scope="module")
def cs_pairs():
    rng = np.random.default_rng(1234)
    return [make_cityscapes_pair(rng) for _ in range(4)]


def _ours(pairs):
    s = CityscapesScorer()
    for gt, inst, pred in pairs:
        s.update_label_ids(torch.tensor(pred), Target(gt, inst.astype(np.int32)))
    return s.result()


def test_cityscapes_matches_independent_implementation(cs_pairs):
    ours = _ours(cs_pairs)
    ref = independent_cityscapes(cs_pairs)
    for c in ours.classes:
        assert c.iou == pytest.approx(ref["class"][c.name], abs=1e-12), c.name
        if c.name in ref["class_inst"]:
            assert c.iiou == pytest.approx(ref["class_inst"][c.name], abs=1e-9), c.name
    for c in ours.categories:
        assert c.iou == pytest.approx(ref["cat"][c.name], abs=1e-12), c.name
        if c.name in ref["cat_inst"]:
            assert c.iiou == pytest.approx(ref["cat_inst"][c.name], abs=1e-9), c.name
    assert ours.mIoU == pytest.approx(_nanmean(ref["class"]), abs=1e-12)
    assert ours.iIoU == pytest.approx(_nanmean(ref["class_inst"]), abs=1e-9)
    assert ours.category_mIoU == pytest.approx(_nanmean(ref["cat"]), abs=1e-12)


def test_cityscapes_reference_data_tells_the_rules_apart(cs_pairs):
    """The comparisons above can fail: on these pairs each official rule changes the numbers vs a naive one."""
    ours = _ours(cs_pairs)
    gt = np.concatenate([g.ravel() for g, _, _ in cs_pairs])
    pred = np.concatenate([p.ravel() for _, _, p in cs_pairs])
    ignored = [i for i in range(34) if i not in REF_EVALUATED]
    car = 26
    tp = np.sum((gt == car) & (pred == car))
    fn = np.sum((gt == car) & (pred != car))
    fp_official = np.sum((pred == car) & (gt != car) & ~np.isin(gt, ignored))
    fp_naive = np.sum((pred == car) & (gt != car))  # FP counted on ignored ground truth too
    (car_score,) = [c for c in ours.classes if c.name == "car"]
    assert car_score.iou == pytest.approx(tp / (tp + fn + fp_official), abs=1e-12)
    assert abs(car_score.iou - tp / (tp + fn + fp_naive)) > 1e-3
    # iIoU differs from IoU (the instance weighting matters) and void-id predictions exist (false negatives)
    assert abs(ours.iIoU - ours.mIoU) > 1e-3 and np.isin(pred[np.isin(gt, [7, 8])], ignored).any()
    # caravan/trailer (ignored classes) predicted inside vehicle instances: counted by the category iIoU only
    (vehicle,) = [c for c in ours.categories if c.name == "vehicle"]
    inst = np.concatenate([i.ravel() for _, i, _ in cs_pairs])
    assert np.isin(pred[(inst > 1000) & np.isin(inst // 1000, [26, 27, 28])], [29, 30]).any()
    assert vehicle.iiou is not None and not math.isnan(vehicle.iiou)


def test_cityscapes_class_iou_equals_trainid_scoring(cs_pairs):
    """labelIds ground truth mapped to trainIds and scored over 19 classes (PSPNet eval_acc.m, mmseg) gives the
    official class IoU for a trainId model (whose predictions are never void)."""
    lut = np.array(cityscapes_label_to_train_lut(), dtype=np.uint8)
    official, train = CityscapesScorer(), SegScorer("cs", tuple(lab.name for lab in CITYSCAPES_TRAIN_LABELS))
    for gt, inst, pred in cs_pairs:
        p = lut[pred]
        p[p == 255] = 18  # a trainId model always predicts one of the 19 classes
        official.update(torch.tensor(p), Target(gt, inst.astype(np.int32)))
        train.update(torch.tensor(p), Target(lut[gt]))
    a, b = official.result(), train.result()
    assert [c.iou for c in a.classes] == pytest.approx([c.iou for c in b.classes], abs=1e-12)
    assert a.mIoU == pytest.approx(b.mIoU, abs=1e-12) and a.aAcc == pytest.approx(b.aAcc, abs=1e-12)


def test_cityscapes_trainid_prediction_equals_labelid_prediction(cs_pairs):
    """A trainId model's prediction mapped to labelIds scores the same as update() with trainIds."""
    lut = np.array(cityscapes_label_to_train_lut(), dtype=np.uint8)
    tid_to_lid = {lab.train_id: lab.id for lab in CITYSCAPES_TRAIN_LABELS}
    a, b = CityscapesScorer(), CityscapesScorer()
    for gt, inst, pred in cs_pairs:
        train = lut[pred]
        train[train == 255] = 0  # a trainId model never predicts void: force a valid class
        as_lid = np.vectorize(tid_to_lid.get)(train).astype(np.uint8)
        a.update(torch.tensor(train), Target(gt, inst.astype(np.int32)))
        b.update_label_ids(torch.tensor(as_lid), Target(gt, inst.astype(np.int32)))
    ra, rb = a.result(), b.result()
    assert np.array_equal(ra.confusion, rb.confusion)
    assert ra.iIoU == rb.iIoU and ra.mIoU == rb.mIoU


def write_cityscapes(root: Path, pairs, split: str = "val", city: str = "aachen", pred_dir: Path | None = None):
    """Files in the released layout (and labelId predictions named <city>_<seq>_<frame>*.png)."""
    gts, preds = [], []
    for i, (gt, inst, pred) in enumerate(pairs):
        stem = f"{city}_{i:06d}_000019"
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((*gt.shape, 3), np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(gt).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
        gts.append(str(gt_dir / f"{stem}_gtFine_labelIds.png"))
        if pred_dir is not None:
            pred_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pred).save(pred_dir / f"{stem}_leftImg8bit.png")
            preds.append(str(pred_dir / f"{stem}_leftImg8bit.png"))
    return gts, preds


@pytest.mark.parity
def test_cityscapes_identical_to_cityscapesscripts(cs_pairs, tmp_path, monkeypatch):
    """Same files through the official evaluator and through `score_folder`: equal to 1e-9."""
    pytest.importorskip("cityscapesscripts")
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # cityscapesScripts 2.3.0 on numpy >= 2.4
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    from segconvert.eval.datasets import CityscapesDataset
    from segconvert.eval.runner import score_folder

    gts, preds = write_cityscapes(tmp_path / "cs", cs_pairs, pred_dir=tmp_path / "results")
    args = official.CArgs()
    for k, v in vars(official.args).items():
        setattr(args, k, v)
    args.quiet, args.JSONOutput, args.evalInstLevelScore, args.evalPixelAccuracy = True, False, True, False
    args.colorized, args.bold, args.nocol = False, "", ""
    ref = official.evaluateImgLists(preds, gts, args)

    with pytest.warns(UserWarning, match="void labelIds"):  # the random predictions hold void ids on purpose
        ours = score_folder(
            CityscapesDataset(tmp_path / "cs"), tmp_path / "results", pred_ids="labelIds-forced", progress=False
        )
    assert np.array_equal(ours.confusion[:, :34], np.array(ref["confMatrix"], dtype=np.int64))
    for c in ours.classes:
        assert c.iou == pytest.approx(ref["classScores"][c.name], abs=1e-9), c.name
        r = ref["classInstScores"][c.name]
        assert (math.isnan(r) and math.isnan(c.iiou)) or c.iiou == pytest.approx(r, abs=1e-9), c.name
    for c in ours.categories:
        assert c.iou == pytest.approx(ref["categoryScores"][c.name], abs=1e-9), c.name
        r = ref["categoryInstScores"][c.name]
        assert (math.isnan(r) and math.isnan(c.iiou)) or c.iiou == pytest.approx(r, abs=1e-9), c.name
    assert ours.mIoU == pytest.approx(ref["averageScoreClasses"], abs=1e-9)
    assert ours.iIoU == pytest.approx(ref["averageScoreInstClasses"], abs=1e-9)
    assert ours.category_mIoU == pytest.approx(ref["averageScoreCategories"], abs=1e-9)
    assert ours.category_iIoU == pytest.approx(ref["averageScoreInstCategories"], abs=1e-9)
    # the table in our labels module is the benchmark's
    from cityscapesscripts.helpers import labels as cs_labels

    assert official.args.avgClassSize == CITYSCAPES_AVG_CLASS_SIZE
    theirs = [
        (lab.name, lab.id, lab.trainId, lab.category, lab.hasInstances, lab.ignoreInEval, lab.color)
        for lab in cs_labels.labels
        if lab.id >= 0
    ]
    assert theirs == [tuple(lab) for lab in CITYSCAPES_LABELS]
