"""PSPNet presets against tables written from the sources, transforms against hand-derived cases, L2-SP."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from segconvert.train.l2sp import L2SP
from segconvert.train.recipes import get_recipe
from segconvert.train.transforms import Crop, RandRotate, RandScale, TFRotateNearest, build_transforms

# hszhao/semseg config/*/..._pspnet50.yaml + tool/train.py (read by hand)
SEMSEG = {
    "voc": (473, 50, 21),
    "ade20k": (473, 100, 150),
    "cityscapes": (713, 200, 19),
}


@pytest.mark.parametrize("ds", sorted(SEMSEG))
def test_semseg_presets(ds: str) -> None:
    crop, epochs, classes = SEMSEG[ds]
    r = get_recipe(f"pspnet-semseg-{ds}").resolve()
    expect = {
        "data.crop_size": [crop, crop], "solver.epochs": epochs, "model.num_classes": classes,
        "data.batch_size": 16, "solver.momentum": 0.9, "solver.base_lr": 0.01, "solver.power": 0.9,
        "solver.weight_decay": 1e-4, "solver.head_lr_mult": 10.0, "model.aux_weight": 0.4,
        "model.norm": "syncbn", "data.ignore_label": 255, "data.scale_range": [0.5, 2.0],
        "data.rotate_range": [-10.0, 10.0], "data.rotate_p": 0.5, "data.blur_p": 0.5, "data.flip_p": 0.5,
        "data.pad": "centre", "model.resize": "align_corners", "solver.schedule": "poly_after_step",
    }  # fmt: skip
    for k, want in expect.items():
        assert r[k] == want, k
    assert r["data.order"] == ["RandScale", "RandRotate", "RandomGaussianBlur", "RandomHorizontalFlip", "Crop",
                               "Normalize"]  # fmt: skip
    assert build_transforms(r.values).names == r["data.order"]
    assert np.allclose(r["data.mean"], [123.675, 116.28, 103.53]) and np.allclose(
        r["data.std"], [58.395, 57.12, 57.375]
    )


def test_l2sp_and_fss_presets() -> None:
    c = get_recipe("pspnet-l2sp-cityscapes").resolve()
    assert (c["l2sp.mode"], c["l2sp.rate"], c["l2sp.rate2"], c["data.crop_size"]) == (1, 1e-4, 1e-3, [816, 816])
    a = get_recipe("pspnet-l2sp-ade20k").resolve()
    assert (a["l2sp.rate"], a["l2sp.rate2"], a["data.crop_size"], a["solver.max_iter"]) == (
        1e-4,
        1e-4,
        [480, 480],
        90000,
    )
    assert build_transforms(c.values).names == c["data.order"]
    f = get_recipe("pspnet-fss-cityscapes").resolve()
    assert (f["data.batch_size"], f["data.crop_size"], f["solver.max_iter"], f["model.bn_momentum"]) == (
        8, [768, 768], 120000, 0.0003)  # fmt: skip
    assert f["data.label_pad"] == 255  # the source's 0 (road) is fixed by default
    assert get_recipe("pspnet-fss-cityscapes").resolve(["data.crop_size=[713,713]"])["data.crop_size"] == [713, 713]
    assert build_transforms(f.values).names == f["data.order"]
    for r in (c, a, f):
        assert all(get_recipe(r.recipe.name).values[k].source for k in r.values)


def test_crop_centred_vs_bottom_right_padding() -> None:
    img = np.full((2, 3, 3), 7.0, np.float32)
    lab = np.ones((2, 3), np.uint8)
    mean = [1.0, 2.0, 3.0]
    ci, cl = Crop([5, 6], mean, 255, "center", "centre")(img, lab, random.Random(0))
    # pad_h 3 -> 1 above, 2 below; pad_w 3 -> 1 left, 2 right
    assert cl[1:3, 1:4].tolist() == [[1, 1, 1]] * 2 and (cl == 255).sum() == 30 - 6
    assert ci[0, 0].tolist() == mean and ci[1, 1].tolist() == [7.0] * 3 and ci[4, 5].tolist() == mean
    bi, bl = Crop([5, 6], mean, 0, "center", "bottom_right")(img, lab, random.Random(0))
    assert bl[0:2, 0:3].tolist() == [[1, 1, 1]] * 2 and (bl == 0).sum() == 24 and bi[0, 0].tolist() == [7.0] * 3


def test_rand_crop_window_and_nearest_scale() -> None:
    lab = np.arange(64, dtype=np.uint8).reshape(8, 8)
    img = np.repeat(lab[..., None], 3, 2).astype(np.float32)
    rng = random.Random(3)
    _, cl = Crop([4, 4], [0, 0, 0], 255, "rand")(img, lab, rng)
    r2 = random.Random(3)
    y, x = r2.randint(0, 4), r2.randint(0, 4)
    assert np.array_equal(cl, lab[y : y + 4, x : x + 4])
    _, sl = RandScale([2.0, 2.0])(img, lab, random.Random(0))
    assert sl.shape == (16, 16) and set(np.unique(sl)) <= set(range(64))  # nearest: no new label values
    assert np.array_equal(sl, lab.repeat(2, 0).repeat(2, 1))  # exact factor 2: dst x -> src x // 2


def test_rotation_fills() -> None:
    img = np.full((9, 9, 3), 50.0, np.float32)
    lab = np.full((9, 9), 3, np.uint8)

    class Always(random.Random):
        def random(self) -> float:
            return 0.0  # p passes; angle = lo

    ri, rl = RandRotate([45.0, 46.0], [10.0, 20.0, 30.0], 255, 1.0)(img, lab, Always())
    assert rl[0, 0] == 255 and rl[4, 4] == 3 and set(np.unique(rl)) <= {3, 255}
    assert ri[0, 0].tolist() == [10.0, 20.0, 30.0] and ri[4, 4].tolist() == [50.0] * 3
    ti, tl = TFRotateNearest([45.0, 45.0], 0.0, 255)(img, lab, random.Random(0))
    assert tl[0, 0] == 255 and tl[4, 4] == 3 and ti[0, 0].tolist() == [0.0] * 3
    same_i, same_l = TFRotateNearest([0.0, 0.0])(img, lab, random.Random(0))
    assert np.array_equal(same_l, lab)


def test_l2sp_gradient_is_analytic_and_touches_only_conv_kernels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    init = {k: v + 0.1 for k, v in model.state_dict().items() if k == "0.weight"}
    for mode in (0, 1):
        model.zero_grad()
        reg = L2SP(model, init, mode, rate=1e-2, rate2=3e-2)
        assert reg.pretrained == ["0.weight"] and reg.new == ["2.weight"]
        reg(model).backward()
        w0 = init["0.weight"] if mode == 1 else 0.0
        assert torch.allclose(model[0].weight.grad, 1e-2 * (model[0].weight.detach() - w0))
        assert torch.allclose(model[2].weight.grad, 3e-2 * model[2].weight.detach())
        for name, p in model.named_parameters():
            if name not in ("0.weight", "2.weight"):
                assert p.grad is None or not p.grad.any(), name
