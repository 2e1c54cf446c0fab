"""PSPNet presets on one process: schedule and parameter groups as the sources compute them, the loss terms, the
init report, L2-SP's reference tensors, AMP / checkpointing / channels_last through the trainer, frozen BN, and
resume after SIGTERM bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segconvert.errors import SegconvertError
from segconvert.eval.datasets import get_dataset
from segconvert.train.psp_model import checkpoint_policy
from segconvert.train.psp_run import build_psp_run
from segconvert.train.recipes import get_recipe
from tests.train_synth import sigterm_after_three_iterations, write_psp_init, write_voc

SMALL = ["data.crop_size=[49,49]", "data.batch_size=2", "run.num_workers=0", "model.num_classes=21"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("psp_run")
    write_voc(base / "voc", n=4, size=49)
    return base / "voc", write_psp_init(base / "init.safetensors")


def _run(recipe: str, voc: tuple[Path, Path], *over: str, init: bool = True):
    root, init_path = voc
    resolved = get_recipe(recipe).resolve([*SMALL, *over])
    return build_psp_run(resolved, get_dataset("voc", root, "train_aug"), init=init_path if init else None)


def test_semseg_schedule_groups_and_loss_terms(voc) -> None:
    run = _run("pspnet-semseg-voc", voc, "solver.epochs=3")
    t = run.trainer
    assert run.max_iter == 3 * 2  # semseg: epochs x len(train_loader) (4 images / batch 2)
    groups = t.optimizer.param_groups
    names = {n for n, _ in run.model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(names)  # every parameter, each once
    assert all(g["weight_decay"] == 1e-4 and g["momentum"] == 0.9 for g in groups)
    backbone = {id(p) for n, p in run.model.named_parameters() if n.startswith("backbone.")}
    assert {id(p) for p in groups[0]["params"]} == backbone
    seen = []
    for it in range(4):
        seen.append((groups[0]["lr"], groups[1]["lr"]))  # the rates the next step uses
        rec = t.step()
        assert rec.loss == pytest.approx(rec.mean_losses["main"] + 0.4 * rec.mean_losses["aux"], rel=1e-6)
        assert rec.lr == pytest.approx(0.01 * (1 - it / 6) ** 0.9, rel=1e-12)
    for it, (b, h) in enumerate(seen):  # poly_learning_rate(base_lr, curr_iter, max_iter, 0.9), heads x 10
        want = 0.01 * (1 - it / 6) ** 0.9
        assert b == pytest.approx(want, rel=1e-12) and h == pytest.approx(10 * want, rel=1e-12)
    assert isinstance(run.model.head.dropout, torch.nn.Dropout2d) and isinstance(run.model.aux.dropout,
                                                                                   torch.nn.Dropout2d)  # fmt: skip


def test_tf_presets_compute_the_rate_before_the_step_with_the_same_sequence(voc) -> None:
    run = _run("pspnet-l2sp-ade20k", voc, "solver.max_iter=5", "model.num_classes=21", init=True)
    assert run.trainer.schedule == "poly_before_step"
    rates = [run.trainer.step().lr for _ in range(3)]
    assert rates == pytest.approx([0.01 * (1 - i / 5) ** 0.9 for i in range(3)], rel=1e-12)
    assert all(g["weight_decay"] == 0.0 for g in run.trainer.optimizer.param_groups)  # the regulariser instead


def test_l2sp_references_are_the_init_tensors_and_new_layers_are_named(voc) -> None:
    run = _run("pspnet-l2sp-cityscapes", voc, "model.num_classes=21")
    reg = run.trainer.regulariser
    init = load_file(voc[1])
    assert reg.mode == 1 and (reg.rate, reg.rate2) == (1e-4, 1e-3)
    assert set(reg.pretrained) == {k for k in init if k.endswith("weight") and init[k].dim() == 4}
    assert set(reg.new) == {"aux.block.conv.weight", "aux.classifier.weight"}
    assert all(torch.equal(reg.ref[k], init[k]) for k in reg.pretrained)
    rec = run.trainer.step()
    assert rec.mean_losses["reg"] > 0 and rec.loss == pytest.approx(
        rec.mean_losses["main"] + 0.4 * rec.mean_losses["aux"] + rec.mean_losses["reg"], rel=1e-6
    )


def test_fss_labels_shrunk_to_the_logits_and_a_1x1_aux(voc) -> None:
    run = _run("pspnet-fss-cityscapes", voc, "model.num_classes=21", "data.label_shrink=8")
    images, labels = run.data.next_batch()
    assert labels.shape[-2:] == (7, 7)  # ceil(49 / 8)
    run.net.train()
    out = run.model(images)
    assert out["out"].shape[-2:] == (7, 7) and out["aux"].shape[-2:] == (7, 7)
    assert [type(m).__name__ for m in run.model.aux] == ["Conv2d"]
    bn = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.0003 and m.eps == 1e-5 for m in bn)


def test_init_report_names_new_and_reinitialised_tensors(voc, tmp_path: Path) -> None:
    other = write_psp_init(tmp_path / "ade.safetensors", num_classes=150)
    root, _ = voc
    run = build_psp_run(get_recipe("pspnet-semseg-voc").resolve(SMALL), get_dataset("voc", root, "train_aug"),
                        init=other)  # fmt: skip
    rep = run.init_report
    assert rep["reinitialised"] == ["head.classifier.weight", "head.classifier.bias"]
    assert sorted({k.split(".")[0] for k in rep["new"]}) == ["aux"]
    assert all(k.startswith("backbone.") or k.startswith(("ppm.", "head.")) for k in rep["initialised"])
    init = load_file(other)
    own = run.model.state_dict()
    assert all(torch.equal(own[k], init[k]) for k in rep["initialised"])


@pytest.mark.parametrize("amp", ["bf16", "none"])
def test_amp_checkpointing_channels_last_train_and_frozen_bn_stays_frozen(voc, amp: str) -> None:
    over = [f"run.amp={amp}", "run.grad_checkpointing=all", "run.channels_last=true", "solver.epochs=20"]
    run = _run("pspnet-semseg-voc", voc, *over, "model.norm=frozen")
    assert run.model.checkpointed == {"stem", "layer1", "layer2", "layer3", "layer4", "ppm", "head"}
    before = {k: v.clone() for k, v in run.model.state_dict().items() if ".bn" in k or "bn." in k}
    losses = [run.trainer.step().mean_losses["main"] for _ in range(6)]
    assert losses[-1] < losses[0]
    after = run.model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())  # no BN tensor moved
    state = run.trainer.state_dict()
    assert state["amp"]["mode"] == amp


def test_grad_checkpointing_values() -> None:
    assert [checkpoint_policy(v) for v in ("none", "light", "all", "layer3,head")] == [
        False, "light", "all", ["layer3", "head"]
    ]  # fmt: skip
    with pytest.raises(SegconvertError, match=r"run.grad_checkpointing='layer9': expected none, all, light") as e:
        checkpoint_policy("layer9")
    assert e.value.key == "run.grad_checkpointing"


def test_fp16_scaler_state_is_checkpointed(voc) -> None:
    run = _run("pspnet-semseg-voc", voc, "run.amp=fp16")
    assert run.trainer.amp.scaler is not None
    state = run.trainer.state_dict()
    assert state["amp"]["scaler"]["scale"] is not None


def test_sigterm_then_resume_equals_the_uninterrupted_run_bit_for_bit(voc, tmp_path: Path) -> None:
    root, init = voc
    sets = [a for s in [*SMALL, "run.checkpoint_every=0"] for a in ("--set", s)]
    args = ["--recipe", "pspnet-semseg-voc", "--dataset", "voc", "--root", root, "--init", init, "--quiet", *sets,
            "--max-iter", "6"]  # fmt: skip
    whole = tmp_path / "whole"
    env_args = [*args, "--set", "run.num_workers=2"]  # worker processes: the same batches
    proc = subprocess.run([sys.executable, "-m", "segconvert", "train", *map(str, env_args), "-o", str(whole)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    cut = tmp_path / "cut"
    stopped = sigterm_after_three_iterations(args, cut, 6, timeout=300)
    resume = [sys.executable, "-m", "segconvert", "train", "--resume", str(cut), "--max-iter", "6", "--quiet"]
    res = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"from {stopped}" in res.stdout
    log = [json.loads(x) for x in (cut / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (whole / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]
    a, b = load_file(cut / "final.safetensors"), load_file(whole / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(cut)


def test_fss_preset_from_the_slim_resnet_v1_50_checkpoint(voc, tmp_path: Path) -> None:
    """fast-semantic-segmentation's init: the TF-Slim ``resnet_v1_50.ckpt`` (real TF fixture, widths / 8) through
    slim2torch; the backbone takes its structure and every tensor, the pyramid / head / aux are new."""
    from segconvert.commands.convert_tf import convert_slim_files
    from segconvert.testing import fixture_path

    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "resnet_v1_50.ckpt"
    weights = tmp_path / "resnet_v1_50.safetensors"
    convert_slim_files(ckpt, weights, arch="resnet")
    root, _ = voc
    over = [*SMALL, "model.num_classes=21", "data.label_shrink=8", "solver.max_iter=3"]
    run = build_psp_run(get_recipe("pspnet-fss-cityscapes").resolve(over), get_dataset("voc", root, "train_aug"),
                        init=weights)  # fmt: skip
    rep = run.init_report
    src = load_file(weights)
    assert {k.removeprefix("backbone.") for k in rep["initialised"]} == {
        k for k in src if not k.endswith("num_batches_tracked")
    }
    assert sorted({k.split(".")[0] for k in rep["new"]}) == ["aux", "head", "ppm"] and not rep["reinitialised"]
    assert run.model.config["stem"] == "7x7" and run.model.config["padding"] != "caffe"
    assert run.model.backbone.out_channels == 256  # the fixture's widths / 8
    rec = run.trainer.step()
    assert rec.mean_losses["reg"] > 0 and rec.iteration == 1


@pytest.mark.parametrize(
    ("flag", "policy"), [(["--grad-checkpointing"], "light"), (["--grad-checkpointing", "all"], "all")]
)
def test_grad_checkpointing_flag_sets_the_policy(voc, tmp_path: Path, flag: list[str], policy: str) -> None:
    from click.testing import CliRunner

    from segconvert.cli import cli

    root, init = voc
    sets = [a for s in SMALL for a in ("--set", s)]
    args = ["train", "--recipe", "pspnet-semseg-voc", "--dataset", "voc", "--root", str(root), "--init", str(init),
            "--quiet", *sets, "--max-iter", "1", *flag, "-o", str(tmp_path / "run")]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    values = json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]["values"]
    assert values["run.grad_checkpointing"] == policy


def test_compiled_training_equals_eager_with_checkpointing(voc) -> None:
    """``run.compile`` through dynamo + AOT autograd (backend ``aot_eager``: the graph capture and the compiled
    backward without inductor's C++ build) with activation checkpointing, the fss label shrink and the L2
    regulariser: the same losses and updates as eager, BN statistics updated once per step."""
    over = ["model.dropout=0.0", "run.grad_checkpointing=light"]
    eager = _run("pspnet-fss-cityscapes", voc, *over)
    w0 = {k: v.clone() for k, v in eager.model.state_dict().items()}
    compiled = _run("pspnet-fss-cityscapes", voc, *over, "run.compile=true", "run.compile_backend=aot_eager")
    assert compiled.trainer.forward is not compiled.trainer.wrapped  # the compiled wrapper runs the steps
    losses = [(eager.trainer.step().loss, compiled.trainer.step().loss)]
    we, wc = eager.model.state_dict(), compiled.model.state_dict()
    assert we.keys() == wc.keys() == w0.keys()  # no compile-wrapper prefix in what checkpoints hold
    params = [k for k in we if we[k].is_floating_point() and "running" not in k]
    de = torch.cat([(we[k] - w0[k]).flatten() for k in params])
    dc = torch.cat([(wc[k] - w0[k]).flatten() for k in params])
    assert de.norm() > 0 and (de - dc).norm() / de.norm() < 1e-4  # the first update: the same gradients
    losses += [(eager.trainer.step().loss, compiled.trainer.step().loss) for _ in range(2)]
    for a, b in losses:  # later steps: float32 differences in the update grow through BN, the losses stay
        assert abs(a - b) <= 1e-5 * abs(a), losses
    for k in (k for k in we if "running" in k or "num_batches" in k):
        assert torch.allclose(we[k].double(), wc[k].double(), rtol=1e-4, atol=1e-7), k
    assert int(wc["backbone.layer1.0.bn1.num_batches_tracked"]) == 3


def test_unknown_compile_backend_is_refused(voc) -> None:
    with pytest.raises(SegconvertError, match="run.compile_backend='nope': not a torch.compile backend"):
        _run("pspnet-semseg-voc", voc, "run.compile=true", "run.compile_backend=nope")


def test_bad_grad_checkpointing_flag_is_one_line_and_writes_nothing(voc, tmp_path: Path) -> None:
    from tests.cli_runner import run_cli

    root, init = voc
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--recipe", "pspnet-semseg-voc", "--dataset", "voc", "--root", root, "--init",
                                init, "--quiet", "--grad-checkpointing", "layer9", "-o", out)  # fmt: skip
    assert code != 0 and not out.exists(), (code, stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run.grad_checkpointing='layer9': expected none, all, light" in lines[0], err
