"""Training recipes: the DeepLab-v2 VOC12 values against the released files, `segconvert recipes`, `--set`,
bad dataset roots, and the recipe over-fitting a synthetic VOC-layout dataset, its snapshot scored by `eval`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from segconvert.testing import fixture_path
from segconvert.train.recipes import RecipeError, get_recipe
from tests.cli_runner import run_cli
from tests.train_synth import write_init, write_voc

# Written from talent518/deeplab-public-ver2@51750fa: exper/voc12/config/resnet101/solver.prototxt,
# exper/voc12/config/resnet101/train.prototxt (layer "data", fc1_voc12_c*, BatchNorm/Scale params, losses) and
# exper/run_pascal.sh (NUM_LABELS=21).
RELEASED = {
    "solver.base_lr": 2.5e-4,
    "solver.lr_policy": "poly",
    "solver.power": 0.9,
    "solver.momentum": 0.9,
    "solver.weight_decay": 5e-4,
    "solver.iter_size": 10,
    "solver.max_iter": 20000,
    "solver.average_loss": 20,
    "solver.display": 20,
    "solver.snapshot": 10000,
    "data.batch_size": 1,
    "data.shuffle": True,
    "data.crop_size": 321,
    "data.mean_value": [104.008, 116.669, 122.675],
    "data.scale_factors": [0.5, 0.75, 1.0, 1.25, 1.5],
    "data.mirror": True,
    "data.ignore_label": 255,
    "model.num_classes": 21,
    "model.aspp_rates": [6, 12, 18, 24],
    "model.msc": True,
    "model.norm": "frozen",
    "params.head_weight.lr_mult": 10.0,
    "params.head_weight.decay_mult": 1.0,
    "params.head_bias.lr_mult": 20.0,
    "params.head_bias.decay_mult": 0.0,
    "params.backbone.lr_mult": 1.0,
    "init.classifier_std": 0.01,
    "init.classifier_bias": 0.0,
    "loss.ignore_label": 255,
}


def test_deeplab_recipe_values_are_the_released_ones_each_with_its_file():
    recipe = get_recipe("deeplabv2-voc12")
    for key, want in RELEASED.items():
        assert recipe.values[key].value == want, key
        assert re.search(r"\.(prototxt|sh|proto)\b|segconvert", recipe.values[key].source), key
    assert "deeplab-public-ver2@51750fa" in recipe.source


def test_deeplab_recipe_agrees_with_the_fixture_solver_and_train_net():
    """The caffe_train fixture keeps the released solver (except iter_size / max_iter) and train net."""
    from segconvert.train.solver import read_solver

    folder = fixture_path("caffe_train", "deeplab_v2_msc_train")
    solver = read_solver(folder / "solver.prototxt")
    r = get_recipe("deeplabv2-voc12").resolve()
    for key in ("base_lr", "power", "momentum", "weight_decay"):
        assert solver.fields[key] == float(np.float32(r[f"solver.{key}"])), key
    assert solver.lr_policy == r["solver.lr_policy"] and solver.average_loss == r["solver.average_loss"]
    text = (folder / "train.prototxt").read_text()
    block = text[text.index('name: "fc1_voc12_c0"') :][:600]
    assert [float(v) for v in re.findall(r"lr_mult:\s*([\d.]+)", block)[:2]] == [10, 20]
    assert [float(v) for v in re.findall(r"decay_mult:\s*([\d.]+)", block)[:2]] == [1, 0]
    assert re.findall(r"dilation:\s*(\d+)", text[text.index('name: "fc1_voc12_c0"') :])[:4] == ["6", "12", "18", "24"]
    bn = text[text.index('name: "bn_conv1"') :][:500]
    assert "use_global_stats: true" in bn and [float(v) for v in re.findall(r"lr_mult:\s*([\d.]+)", bn)[:3]] == [0] * 3


def test_recipes_command_lists_every_value_with_its_source():
    code, out, err = run_cli("recipes")
    assert code == 0, err
    recipe = get_recipe("deeplabv2-voc12")
    assert "deeplabv2-voc12" in out and recipe.source in out
    for key, rv in recipe.values.items():
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == key)
        assert json.dumps(rv.value) in line and rv.source in line
    code, out, _ = run_cli("recipes", "deeplabv2-voc12", "--set", "solver.max_iter=50", "--json")
    entry = json.loads(out)["values"]["solver.max_iter"]
    assert code == 0 and entry["value"] == 50 and entry["preset"] == 20000


def test_set_overrides_are_typed_and_named():
    r = get_recipe("deeplabv2-voc12").resolve(["solver.base_lr=1e-3", "data.scale_factors=0.5,1", "data.mirror=false"])
    assert r["solver.base_lr"] == 1e-3 and r["data.scale_factors"] == [0.5, 1] and r["data.mirror"] is False
    assert r.to_json()["overridden"]["solver.base_lr"] == {"preset": 2.5e-4, "used": 1e-3}
    with pytest.raises(RecipeError, match="no key 'base_lr'; did you mean solver.base_lr"):
        get_recipe("deeplabv2-voc12").resolve(["base_lr=1"])
    code, _, err = run_cli("recipes", "deeplabv2-voc12", "--set", "solver.iter_size=two")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "solver.iter_size" in err


def test_dataset_root_that_does_not_match_one_line_exit_2_nothing_written(tmp_path):
    (tmp_path / "notvoc").mkdir()
    (tmp_path / "notvoc" / "images").mkdir()
    out = tmp_path / "out"
    code, _, err = run_cli("train", "--recipe", "deeplabv2-voc12", "--dataset", "voc", "--root", tmp_path / "notvoc",
                           "-o", out, "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not a PASCAL VOC 2012 root" in err and str(tmp_path / "notvoc") in err
    assert not out.exists()
    code, _, err = run_cli("train", "--recipe", "nope", "--dataset", "voc", "--root", tmp_path, "-o", out)
    assert code == 2 and "unknown recipe 'nope'" in err and not out.exists()


@pytest.mark.slow
def test_recipe_overfits_a_synthetic_voc_set_and_the_snapshot_evaluates(tmp_path):
    """The DeepLab-v2 recipe (MSC, four losses, scale/crop/mirror augmentation, poly, lr_mult 10/20) on a
    width-reduced ResNet-50 DeepLab from a 91-class "COCO" init: the classifier is re-initialised, the run
    over-fits three 65x65 images, and `segconvert eval` scores its final snapshot above 90% pixel accuracy."""
    root, out = tmp_path / "voc", tmp_path / "run"
    write_voc(root)
    init = write_init(tmp_path / "coco_init.safetensors", num_classes=91)
    sets = ["solver.max_iter=400", "solver.iter_size=1", "solver.base_lr=0.003", "solver.display=100",
            "solver.snapshot=200", "data.crop_size=65", "run.checkpoint_every=200"]  # fmt: skip
    args = ["train", "--recipe", "deeplabv2-voc12", "--init", init, "--dataset", "voc", "--root", root, "-o", out]
    code, stdout, err = run_cli(*args, *(a for s in sets for a in ("--set", s)), "--quiet")
    assert code == 0, err
    assert "re-initialised N(0, 0.01), bias 0.0: the init has 91 classes, the recipe 21" in stdout
    assert "Iteration 0, loss = " in stdout and "Iteration 300, lr = " in stdout
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["overridden"]["solver.base_lr"] == {"preset": 2.5e-4, "used": 0.003}
    assert run["recipe"]["values"]["data.scale_factors"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert (out / "iter_200.safetensors").is_file() and (out / "iter_400.safetensors").is_file()
    meta = json.loads((out / "final.safetensors.json").read_text())
    assert meta["training"]["recipe"]["values"]["solver.max_iter"] == 400
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(1, 401))
    assert np.mean([r["loss"] for r in rows[-20:]]) < 0.25 * np.mean([r["loss"] for r in rows[:20]])
    code, stdout, err = run_cli("eval", out / "final.safetensors", "--dataset", "voc", "--root", root, "--split", "val",
                                "--protocol", "whole", "--device", "cpu", "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)["metrics"]
    print("pixel accuracy", metrics["aAcc"], "mIoU", metrics["mIoU"])
    assert metrics["aAcc"] > 0.9
