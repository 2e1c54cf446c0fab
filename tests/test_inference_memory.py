"""Loading and fusing without a second copy of the weights: the same numbers as before, one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segconvert.errors import WeightsFileError
from segconvert.inference import fuse as fuse_mod
from segconvert.reference_models import create_model
from segconvert.weights.store import _load_raw, load_model, save_converted
from tests.test_distributed_eval import CONFIG, _weights


def test_loaded_model_holds_the_file_tensors_exactly_and_writably(tmp_path):
    path = _weights(tmp_path, 21)
    torch.manual_seed(0)
    ref = create_model("pspnet50", **{**CONFIG, "num_classes": 21})
    state, _ = _load_raw(path)
    ref.load_state_dict(state)
    model = load_model(path)
    got = model.state_dict()
    assert got.keys() == ref.state_dict().keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in ref.state_dict().items())
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert all(p.requires_grad for p in model.parameters())
    next(model.parameters()).data.add_(1.0)  # fresh memory, not a read-only mapping of the file
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), ref.eval()(x))


def test_every_safetensors_dtype_reads_back_and_a_truncated_file_is_one_line(tmp_path):
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "c": torch.tensor([True, False, True]),
        "d": torch.zeros(0, 4, dtype=torch.int64),
    }
    path = save_converted(tmp_path / "t.safetensors", tensors, {"arch": "none"})
    got, meta = _load_raw(path)
    assert meta["arch"] == "none" and got.keys() == tensors.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in tensors.items())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(WeightsFileError) as info:
        _load_raw(cut)
    assert "\n" not in str(info.value) and "cut.safetensors" in str(info.value)


@pytest.mark.parametrize("transposed", [False, True])
def test_blockwise_folding_is_the_whole_tensor_float64_fold(monkeypatch, transposed):
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(6, 8, 3, groups=2) if transposed else nn.Conv2d(6, 8, 3)
    scale, shift = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    w = conv.weight.detach().double()
    if transposed:
        want = (w.reshape(2, 3, 4, 3, 3) * scale.reshape(2, 1, 4, 1, 1)).reshape(w.shape).float()
    else:
        want = (w * scale.reshape(-1, 1, 1, 1)).float()
    monkeypatch.setattr(fuse_mod, "_FOLD_BLOCK", 9)  # one row of 9 weights per block
    fuse_mod._fold_into(conv, [(scale, shift)])
    assert torch.equal(conv.weight.detach(), want)
