"""Generic Caffe -> PyTorch conversion (one module per Caffe layer) against real-Caffe dumps, layer by layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segconvert.converters import convert_caffe_net
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.errors import ConversionError
from segconvert.formats.caffemodel_writer import write_caffemodel
from segconvert.graph import load_net
from segconvert.parity.caffe import caffe_parity
from segconvert.reference_models import create_model
from segconvert.reference_models.caffe_generic import CaffeGenericNet, python_name
from segconvert.reference_models.caffe_ops import ArgMax, Power
from segconvert.testing import fixture_path
from tests.caffe_cases import LAYER_CASES

CASES = [("layers", c) for c in LAYER_CASES] + [("v1_format",)]
NETS = ["deeplab_v2_resnet101_single", "deeplab_v2_resnet101_msc", "pspnet50_ade20k_473"]
SLOW_NETS = ["pspnet101_voc2012_473", "pspnet101_cityscapes_713"]  # 12-20 s each on 2 cores


def load_case(*parts: str):
    case = fixture_path("caffe", *parts)
    net = load_net(case / "net.prototxt", case / "weights.caffemodel")
    meta = json.loads((case / "meta.json").read_text())
    return case, net, meta, np.load(case / "input.npy"), np.load(case / "outputs.npz")


def test_every_case_is_listed():
    assert sorted(p.name for p in fixture_path("caffe", "layers").iterdir() if p.is_dir()) == sorted(LAYER_CASES)


@pytest.mark.parametrize("parts", CASES, ids=["/".join(p) for p in CASES])
def test_layer_cases_match_caffe_at_every_layer(parts):
    case, net, meta, x, ref = load_case(*parts)
    conv = convert_caffe_generic(net)
    model = conv.build_model()
    tops = model.layer_outputs(torch.from_numpy(x))
    declared = [layer for layer in meta["layers"] if not layer["implicit"]]
    for layer in declared:  # every top of every prototxt layer, in-place stages included
        for i in range(len(layer["tops"])):
            key = f"{layer['name']}/{i}"
            want, got = ref[key], tops[key].numpy()
            assert got.shape == want.shape, key
            assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-6), key
    # forward() returns the net's output blobs: the last value of each, in Caffe's (sorted) order
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    outs = out if isinstance(out, tuple) else (out,)
    for blob, value in zip(model.output_names, outs, strict=True):
        last = [f"{lay['name']}/{i}" for lay in meta["layers"] for i, t in enumerate(lay["tops"]) if t == blob][-1]
        assert np.abs(value.numpy() - ref[last]).max() <= 1e-5 * max(np.abs(ref[last]).max(), 1e-6)
    # each source blob became exactly one tensor (BatchNorm: 3 blobs -> running_mean/var)
    n_blobs = sum(len(layer.blobs) for layer in net.layers)
    n_bn = sum(layer.type == "BatchNorm" for layer in net.layers)
    assert len(conv.state_dict) == n_blobs - n_bn


def test_state_dict_keys_and_values_are_natural():
    _, net, _, _, _ = load_case("layers", "batchnorm_default_test")
    conv = convert_caffe_generic(net)
    assert sorted(conv.state_dict) == [
        "bn.running_mean", "bn.running_var", "conv.bias", "conv.weight", "scale.bias", "scale.weight",
    ]  # fmt: skip
    bn = net.layer("bn")
    s = float(bn.blobs[2].reshape(-1)[0])
    np.testing.assert_allclose(conv.state_dict["bn.running_mean"].numpy(), bn.blobs[0] / s, rtol=1e-6)
    assert (
        conv.state_dict["conv.weight"].data_ptr() == torch.from_numpy(np.asarray(net.layer("conv").blobs[0])).data_ptr()
    )
    _, net, _, _, _ = load_case("layers", "innerproduct_transpose")
    conv = convert_caffe_generic(net)
    w = net.layer("ip").blobs[0]  # stored (K, N) = (572, 6)
    assert w.shape == (572, 6) and conv.state_dict["ip.weight"].shape == (6, 572)
    np.testing.assert_array_equal(conv.state_dict["ip.weight"].numpy(), w.T)
    assert any("transpose" in n for n in conv.notes)


def test_config_is_json_and_rebuilds_the_model():
    _, net, _, x, _ = load_case("layers", "split_implicit")
    conv = convert_caffe_generic(net)
    config = json.loads(json.dumps(conv.config))
    model = create_model("caffe_generic", **config)
    assert isinstance(model, CaffeGenericNet) and model.config == conv.config
    model.load_state_dict(conv.state_dict)
    again = create_model(model.arch_name, **model.config)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(x)), again(torch.from_numpy(x)))
    # Split layers are implicit: no module, their tops alias the bottom
    assert [s["type"] for s in config["layers"]].count("Split") == 0  # the prototxt has none; Caffe adds them
    assert [n for n, _ in model.named_children()] == ["conv_a", "conv_b", "sum", "sum2"]


def _write(tmp_path, text: str, layers=()):
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    if not layers:
        return proto, None
    model = tmp_path / "net.caffemodel"
    net = load_net(proto)
    write_caffemodel(model, [(net.layer(name).param, blobs) for name, blobs in layers])
    return proto, model


HEAD = 'name: "t"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 6\n'


def test_unsupported_layers_are_listed_in_one_error(tmp_path):
    proto, _ = _write(
        tmp_path,
        HEAD
        + 'layer { name: "e" type: "Exp" bottom: "data" top: "e" }\n'
        + 'layer { name: "p" type: "Pooling" bottom: "e" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } }\n'
        + 'layer { name: "r" type: "ReLU" bottom: "p" top: "p" }\n'
        + 'layer { name: "m" type: "MVN" bottom: "p" top: "m" }\n'
        + 'layer { name: "l" type: "LRN" bottom: "m" top: "l" lrn_param { local_size: 4 } }\n'
        + 'layer { name: "p2" type: "Pooling" bottom: "data" top: "p2" top: "mask"'
        + " pooling_param { kernel_size: 2 } }\n",
    )
    with pytest.raises(ConversionError) as info:
        convert_caffe_generic(load_net(proto))
    msg = info.value.one_line()
    assert "5 layer(s)" in msg and "\n" not in msg
    for part in ("e (Exp)", "p (Pooling: STOCHASTIC", "m (MVN)", "l (LRN: local_size 4 is even", "p2 (Pooling: 2 tops"):
        assert part in msg
    assert "r (ReLU" not in msg


def test_data_loss_and_metric_layers_are_skipped(tmp_path):
    text = (
        'name: "train"\n'
        'layer { name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 8 }'
        " data_param { batch_size: 2 } }\n"
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c"'
        " convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layer { name: "s" type: "Interp" bottom: "label" top: "ls" interp_param { shrink_factor: 2 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "ls" top: "loss" }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "c" bottom: "ls" top: "acc" include { phase: TEST } }\n'
    )
    rng = np.random.default_rng(0)
    proto, model = _write(
        tmp_path, text, [("c", [rng.normal(size=(4, 3, 3, 3)).astype(np.float32), np.ones(4, np.float32)])]
    )
    conv = convert_caffe_generic(load_net(proto, model))
    assert conv.config["inputs"] == [{"name": "data", "shape": [2, 3, 8, 8]}]
    assert conv.config["outputs"] == ["c"]
    assert [(n, t) for n, t, _ in conv.skipped_layers] == [
        ("d", "Data"), ("s", "Interp"), ("loss", "SoftmaxWithLoss"), ("acc", "Accuracy"),
    ]  # fmt: skip
    assert [s["name"] for s in conv.config["layers"]] == ["c"]


def test_weights_shared_by_param_name_use_one_module(tmp_path):
    text = HEAD + (
        'layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "w" } param { name: "b" }'
        " convolution_param { num_output: 2 kernel_size: 1 } }\n"
        'layer { name: "a2" type: "Convolution" bottom: "a" top: "a2" param { name: "w" } param { name: "b" }'
        " convolution_param { num_output: 2 kernel_size: 1 } }\n"
    )
    rng = np.random.default_rng(1)
    blobs = [rng.normal(size=(2, 2, 1, 1)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    proto, model = _write(tmp_path, text, [("a", blobs), ("a2", blobs)])
    conv = convert_caffe_generic(load_net(proto, model))
    assert sorted(conv.state_dict) == ["a.bias", "a.weight"] and conv.shared_copies == [("a2", "a")]
    assert conv.tap_map["a2"].module == "a" and conv.tap_map["a2"].call == 1
    net_model = conv.build_model()
    x = torch.from_numpy(rng.normal(size=(1, 2, 5, 6)).astype(np.float32))
    w, b = torch.from_numpy(blobs[0]), torch.from_numpy(blobs[1])
    want = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w, b), w, b)
    with torch.no_grad():
        torch.testing.assert_close(net_model(x), want)
    other = [blobs[0] * 2, blobs[1]]  # a copy whose stored weights differ from its owner's: refuse
    proto, model = _write(tmp_path, text, [("a", blobs), ("a2", other)])
    with pytest.raises(ConversionError, match="weights differ from 'a'"):
        convert_caffe_generic(load_net(proto, model))


def test_bnll_and_argmax_without_axis_by_hand(tmp_path):
    proto, _ = _write(
        tmp_path,
        HEAD + 'layer { name: "b" type: "BNLL" bottom: "data" top: "b" }\n'
        'layer { name: "am" type: "ArgMax" bottom: "b" top: "am" argmax_param { top_k: 2 out_max_val: true } }\n',
    )
    model = convert_caffe_generic(load_net(proto)).build_model()
    x = torch.zeros(1, 2, 5, 6)
    x[0, 1, 2, 3] = 30.0  # BNLL(30) = 30 + log(1 + e^-30) -> 30 in float32; BNLL(0) = log 2
    out = model.layer_outputs(x)
    assert torch.allclose(out["b/0"][0, 0, 0, 0], torch.tensor(0.693147180))
    assert out["b/0"][0, 1, 2, 3] == 30.0
    am = out["am/0"]  # no axis: over the 60 values per item; (N, 2, top_k, 1) = indices, then values
    assert am.shape == (1, 2, 2, 1)
    assert am[0, 0, 0, 0] == 30 + 2 * 6 + 3  # flat index of the maximum
    assert am[0, 0, 1, 0] == 59  # ties (all log 2) go to the largest index, as Caffe's std::greater on pairs
    assert am[0, 1, 0, 0] == 30.0


def test_power_and_argmax_edge_cases_by_hand():
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    assert torch.equal(Power(power=0.0, scale=3.0, shift=5.0)(x), torch.ones_like(x))  # power 0: ones
    assert torch.equal(Power(power=3.0, scale=0.0, shift=2.0)(x), torch.full_like(x, 8.0))  # scale 0: shift^p
    assert torch.equal(Power(power=2.0, scale=0.5, shift=1.0)(x), torch.tensor([[0.25, 1.5625, 4.0]]))
    y = torch.tensor([[[1.0, 3.0, 3.0, 2.0]]])
    assert ArgMax(top_k=2, axis=2)(y).tolist() == [[[2.0, 1.0]]]  # tie: larger index first
    assert ArgMax(top_k=3, out_max_val=True, axis=-1)(y).tolist() == [[[3.0, 3.0, 2.0]]]


def test_python_names():
    taken: set[str] = set()
    reserved = {"forward"}
    names = [python_name(n, taken, reserved) for n in ["conv5-3", "conv5_3", "1x1", "class", "forward", "a/b.c"]]
    assert names == ["conv5_3", "conv5_3_2", "layer_1x1", "class_", "forward_", "a_b_c"]


@pytest.mark.parametrize("name", NETS + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_NETS])
def test_networks_generic_matches_caffe_and_the_named_path(name):
    case, net, meta, x, ref = load_case(name)
    conv = convert_caffe_generic(net)
    model = conv.build_model()
    report, out = caffe_parity(model, conv.tap_map, x, ref, meta, source=name)
    assert report.ok, report.format()
    single_top = [lay for lay in meta["layers"] if not lay["implicit"] and len(lay["tops"]) == 1]
    assert len(report.rows) == len(single_top)  # every prototxt layer compared, in-place stages included
    if name.endswith("msc"):  # the _res075 / _res05 copies share the 1x weights by param name
        copies = [layer.name for layer in net.layers if layer.shared_from]
        assert len(copies) > 600 and all("_res075" in n or "_res05" in n for n in copies)
        assert sorted(c for c, _ in conv.shared_copies) == sorted(copies)
        assert not [k for k in conv.state_dict if "_res0" in k]
    named = convert_caffe_net(net).build_model()
    with torch.no_grad():
        want = named(torch.from_numpy(x))
    final = next(o for o in meta["outputs"] if o["key"] == f"{meta['layers'][-1]['name']}/0")
    assert torch.abs(out - want).max() <= 2e-3 * final["stats"]["absmax"]  # fixtures README: deep-net tolerance


def test_prototxt_only_gives_config_without_weights():
    case = fixture_path("caffe", "pspnet50_ade20k_473")
    with pytest.raises(ConversionError, match="no caffemodel"):
        convert_caffe_generic(load_net(case / "net.prototxt"))
    conv = convert_caffe_generic(load_net(case / "net.prototxt"), require_weights=False)
    assert conv.state_dict == {} and conv.config["outputs"] == ["conv6_interp"]
    assert conv.tap_map["conv6"].module == "conv6"


def test_pooling_clip_rule_applies_to_both_axes_by_hand(tmp_path):
    # pad_h 1, pad_w 0, kernel_w 2 < stride_w 3 on W = 12: ceil gives 5 columns, but Caffe tests the clip rule on
    # both axes once any pad is set ((5 - 1) * 3 >= 12 + 0), so the last column goes: 4 windows at 0, 3, 6, 9
    proto, _ = _write(
        tmp_path,
        'name: "t"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 3\ninput_dim: 12\n'
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_h: 3 kernel_w: 2'
        " stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 0 } }\n",
    )
    net = load_net(proto)
    assert net.blob_shapes["p"] == (1, 1, 3, 4)
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 3, 12) % 7
    rows = [(0, 2), (0, 3), (1, 3)]  # row windows [-1, 2), [0, 3), [1, 4) clipped to the input
    want = torch.tensor([[max(x[0, 0, r0:r1, c : c + 2].flatten()) for c in (0, 3, 6, 9)] for r0, r1 in rows])
    model = convert_caffe_generic(net).build_model()
    with torch.no_grad():
        assert torch.equal(model(x)[0, 0], want)


def test_supported_types_cover_the_issue_list():
    from segconvert.converters.caffe_generic import _PARAMS
    from segconvert.reference_models.caffe_generic import SUPPORTED_TYPES

    required = (
        "Input Convolution Deconvolution Pooling InnerProduct ReLU PReLU ELU Sigmoid TanH AbsVal Power BNLL "
        "BatchNorm Scale Bias BN Interp Eltwise Concat Slice Split Crop Flatten Reshape Dropout Softmax LRN ArgMax"
    ).split()
    assert set(required) <= set(SUPPORTED_TYPES)
    assert set(_PARAMS) | {"Input", "Split"} == set(SUPPORTED_TYPES)  # every type has a converter
