"""The protocols' image resizes done ahead, on the CPU, by the loader (its DataLoader workers): same scores."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from segconvert.eval.crops import Runtime
from segconvert.eval.datasets import get_dataset
from segconvert.eval.loader import decoded
from segconvert.eval.preprocessing import Preprocessing
from segconvert.eval.protocols import PSPNetMatlab, get_protocol
from segconvert.eval.runner import evaluate
from segconvert.weights.store import load_model
from tests.test_distributed_eval import _voc_root, _weights

PREP = Preprocessing("RGB", (120.0, 110.0, 100.0), (60.0, 60.0, 60.0))


class _Tiny(nn.Module):
    """Logits at input resolution from a 3x3 conv: enough to make every resized pixel count."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


CASES = [
    ("pspnet", {"crop": 33, "base_size": 40}, (0.5, 1.0, 1.5), True),
    ("semseg", {"crop": 33, "base_size": 40}, (0.75, 1.25), True),
    ("mmseg-slide", {"crop": 24, "stride": 16, "resize_scale": (64, 32)}, (1.0, 1.5), True),
    ("whole", {}, (0.5, 1.0), True),
    ("deeplab-msc", {"crop": 41}, None, None),
]


@pytest.mark.parametrize(("name", "fields", "scales", "flip"), CASES, ids=[c[0] for c in CASES])
def test_predict_with_the_loader_resized_images_gives_the_same_scores_bit_for_bit(name, fields, scales, flip):
    proto = get_protocol(name, "voc", scales=scales, flip=flip, **fields)
    image = np.random.default_rng(3).integers(0, 256, (29, 37, 3), dtype=np.uint8)
    rt, model = Runtime(torch.device("cpu")), _Tiny().eval()
    resized = proto.resized_images(image)
    plans = proto.plan(*image.shape[:2])
    expected_sizes = {p.resized for p in plans if proto.resizes(p, *image.shape[:2])}
    assert set(resized) == expected_sizes
    if name == "deeplab-msc":
        assert resized == {}  # padding only: nothing to resize
    else:
        assert resized  # one image per scale that resizes (flip plans share theirs)
        if name == "whole":
            assert image.shape[:2] not in resized  # scale 1 runs the image itself
    for size, im in resized.items():
        assert tuple(im.shape) == (3, *size) and im.device.type == "cpu"
        assert im.dtype == (torch.uint8 if proto.image_uint8 else torch.float32)
    here = proto.predict(model, image, PREP, rt)
    ahead = proto.predict(model, image, PREP, rt, resized)
    assert here.shape == (5, *image.shape[:2]) and torch.equal(here, ahead)


def test_matlab_uint8_resize_is_integer_valued_so_uint8_carries_it_exactly():
    proto = get_protocol("pspnet", "voc", crop=33, base_size=40, scales=(0.5, 1.75))
    image = np.random.default_rng(4).integers(0, 256, (29, 37, 3), dtype=np.uint8)
    full = torch.from_numpy(image).permute(2, 0, 1).double()
    for size, im in proto.resized_images(image).items():
        exact = proto.resize_image(full, size)
        assert torch.equal(exact, exact.round()) and torch.equal(im.double(), exact)


def _pid(image: np.ndarray) -> int:
    return os.getpid()


def test_the_loader_runs_prepare_in_its_workers_and_carries_their_errors_back(tmp_path):
    ds = get_dataset("voc", _voc_root(tmp_path / "voc", 3), "val")
    items = list(decoded(ds, range(3), workers=2, prepare=_pid))
    assert [it.index for it in items] == [0, 1, 2]
    assert all(it.prepared != os.getpid() and it.prepare_seconds >= 0 for it in items)
    assert [it.prepared for it in decoded(ds, range(3), workers=0, prepare=_pid)] == [os.getpid()] * 3
    bad = list(decoded(ds, range(2), workers=2, prepare=_refuse))
    assert all(isinstance(it.error, ValueError) and str(it.error) == "no" for it in bad)


def _refuse(image: np.ndarray) -> None:
    raise ValueError("no")


@dataclass(frozen=True)
class _WorkersOnly(PSPNetMatlab):
    """PSPNet's protocol refusing to resize an image in the process that runs the network."""

    main_pid: int = 0

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if os.getpid() == self.main_pid:
            raise AssertionError("an image was resized in the main process")
        return super().resize_image(img, size)


def test_eval_with_workers_resizes_every_image_in_them_and_scores_as_in_process(tmp_path):
    weights, root = _weights(tmp_path, 21), _voc_root(tmp_path / "voc", 4)
    ds = get_dataset("voc", root, "val")
    fields = {"crop": 32, "base_size": 40, "scales": (0.75, 1.0), "flip": True}
    ref = evaluate(load_model(weights, fuse=True), ds, PSPNetMatlab(**fields), device="cpu", progress=False)
    proto = _WorkersOnly(**fields, main_pid=os.getpid())
    with pytest.raises(AssertionError, match="resized in the main process"):
        evaluate(load_model(weights, fuse=True), ds, proto, device="cpu", progress=False, workers=0, limit=1)
    two = evaluate(load_model(weights, fuse=True), ds, proto, device="cpu", progress=False, workers=2)
    assert ref.confusion.sum() > 0 and np.array_equal(ref.confusion, two.confusion)
    assert two.info["timing"]["resize"] > 0  # measured in the workers
