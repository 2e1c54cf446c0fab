"""Benchmark: converted models' CPU forward, eager vs fused, against OpenCV dnn 4.x on the same Caffe files.

For PSPNet50 (ADE20K, 473) and DeepLab-v2 (ResNet-101 MSC, 513): full-width random weights in the released
caffemodel layout are generated from the released prototxts (``--quick``: the width-reduced fixture nets and
their real fixture weights instead), converted with ``segconvert caffe2torch``, then each runner runs in its
own fresh process with the same thread count, alternating, ``--repeat`` times:

- ``eager``: ``segconvert.load_model(weights)`` (the plain converted module);
- ``fused``: ``segconvert.load_model(weights, fuse=True)``, the inference form eval / predict / benchmark run
  (BatchNorm / Scale folded, in-place activations, convolutions + their ReLU as oneDNN primitives:
  :mod:`segconvert.inference.onednn`; weights and input channels_last);
- ``fused_nchw``: the same in NCHW memory (``prepare_model(channels_last=False)``, ``--no-channels-last``);
- ``fused_nodnn``: ``fused`` without the oneDNN pass (``onednn=False``: eager ``F.conv2d``, ReLU separate);
- ``fused_nopyr``: ``fused`` without PSPNet's pyramid head path (``pyramid=False``: the head's 3x3 conv over
  the 4096-channel concat, :mod:`segconvert.inference.pyramid`; DeepLab: the same as ``fused``);
- ``opencv``: ``cv2.dnn.readNetFromCaffe`` on the same net (the OpenCV-readable twin segconvert's parity
  runner writes: PSPNet's ``BN`` as BatchNorm + Scale, ``Interp`` as OpenCV's), OpenCV's default fusion on.

Reported: median forward seconds (after warm-up) and peak RSS (``VmHWM``) of each, also after each stage
(process start, model loaded, first forward); ratios fused vs eager, fused vs OpenCV, and RSS fused / OpenCV.
Targets (issue 15): >= 1.3x eager, >= 1.0x OpenCV, RSS <= 0.5x. Every runner pins glibc's mmap threshold
(``--mmap-threshold`` MiB, 0: glibc's dynamic default), as ``segconvert eval`` does.

Peak RSS measured on the 2-core machine (2 threads, load average 4-5, one run each), full width:

==============  ==============  ===========  =============  ======  ==============
net             before          load fixed   + mmap thresh  OpenCV  fused / OpenCV
                eager / fused   eager/fused  eager / fused
==============  ==============  ===========  =============  ======  ==============
PSPNet50 473    781 / 1033 MB   742 / 842    664 / 746      1387    0.54 (was 0.72)
DeepLab-v2 513  --              --           632 / 654      1414    0.46
==============  ==============  ===========  =============  ======  ==============

Where it went (PSPNet50): loading held the weights twice (the file's tensors and a randomly initialised
model, +180 MB) and folding made float64 copies of whole weights (+360 MB for the 4096->512 3x3 conv);
now the model is built on the meta device and given the file's tensors, and folding runs in 512 KB blocks.
Left: ~190 MB of libtorch pages, ~80 MB of Python modules the meta-device fusion trace imports, and
oneDNN's per-call weight / input reorder of that conv (+107 MB, +51 MB with channels_last).

``--keras``: in the same run, the converted Keras families (Fast-SCNN, DeepLabV3+ MobileNetV2 at 512x1024)
against graph-mode tf_keras with the same thread count (``bench_keras.py``'s runners ``keras``, ``eager``,
``fused_cl`` -- the inference form -- and ``fused_cl_malloc``, freed memory kept as ``segconvert benchmark``
does; two interleaved rounds of fresh processes).

``--gpu``: the PSPNet101 Cityscapes protocol (713 sliding, flip) over ``--images`` synthetic 1024x2048 images
on CUDA with bf16 autocast (images/s, network / protocol split, ``torch.cuda.max_memory_allocated``).

Run: ``python benchmarks/bench_infer.py [--quick] [--threads 2] [--repeat 1] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent.parent / "shared" / "fixtures" / "caffe"
# name -> (fixture case, full-width input side, width-reduced (quick) input side)
NETS = {
    "pspnet50": ("pspnet50_ade20k_473", 473, 473),
    "deeplab_v2": ("deeplab_v2_resnet101_msc", 513, 129),
}
RUNNERS = ("eager", "fused", "fused_nchw", "fused_nodnn", "fused_nopyr", "opencv")


# ------------------------------------------------------------------------------------------ children


def _child(args: argparse.Namespace) -> None:
    import numpy as np

    from segconvert.inference.memory import fix_mmap_threshold, peak_rss

    if args.mmap_threshold > 0:  # every runner alike: glibc returns freed activations at once
        fix_mmap_threshold(args.mmap_threshold)
    stages = {"start": peak_rss()}
    x = np.random.default_rng(0).normal(0, 40, (1, 3, args.size, args.size)).astype(np.float32)
    times = []
    if args.child == "opencv":
        import cv2

        cv2.setNumThreads(args.threads)
        net = cv2.dnn.readNetFromCaffe(args.prototxt, args.caffemodel)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def forward() -> None:
            net.setInput(x)
            net.forward()

        stages["loaded"] = peak_rss()
    else:
        import torch

        import segconvert

        torch.set_num_threads(args.threads)
        from segconvert.inference.prepare import prepare_model

        model = segconvert.load_model(args.weights)
        if args.child != "eager":
            onednn = False if args.child == "fused_nodnn" else None
            cl, pyramid = args.child != "fused_nchw", args.child != "fused_nopyr"
            model = prepare_model(model, onednn=onednn, channels_last=cl, pyramid=pyramid)
        xt = torch.from_numpy(x)
        if getattr(model, "segconvert_channels_last", False):  # as eval / benchmark feed the inference form
            xt = xt.contiguous(memory_format=torch.channels_last)
        stages["loaded"] = peak_rss()

        def forward() -> None:
            with torch.inference_mode():
                model(xt)

    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        forward()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        if i == 0:
            stages["first_forward"] = peak_rss()
    rss = max(peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    stages["end"] = rss
    out = {"median_s": statistics.median(times), "times_s": times, "peak_rss": rss, "peak_rss_by_stage": stages}
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------ parent


_NOT_DEPLOY = {"ImageSegData", "MatWrite", "DenseCRF", "ArgMax", "SegAccuracy", "Silence"}


def _deploy(proto: Path, size: int, out: Path) -> Path:
    """A train/test prototxt (DeepLab's ``ImageSegData`` input, ``MatWrite`` / CRF / accuracy tail) as a deploy
    net: ``input: "data"`` of 1x3xSxS and only the layers that compute the scores."""
    from google.protobuf import text_format

    from segconvert.formats.caffe_schema import message_class

    net = text_format.Parse(proto.read_text(), message_class("NetParameter")())
    if net.input or not any(layer.type in _NOT_DEPLOY for layer in net.layer):
        return proto
    keep = [layer for layer in net.layer if layer.type not in _NOT_DEPLOY]
    del net.layer[:]
    net.layer.extend(keep)
    net.input.append("data")
    net.input_dim.extend([1, 3, size, size])
    out.write_text(text_format.MessageToString(net))
    return out


def _prepare(name: str, quick: bool, tmp: Path) -> dict:
    """Caffe files, the converted weights and the OpenCV twin of one net."""
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.graph import load_net
    from segconvert.parity.opencv_runtime import _Twin, _write_twin, net_input

    case, full_size, quick_size = NETS[name]
    root = FIXTURES / case
    size = quick_size if quick else full_size
    if quick:
        proto, model = root / "net.prototxt", root / "weights.caffemodel"
    else:
        proto = _deploy(root / "full.prototxt", size, tmp / f"{name}_deploy.prototxt")
        model = write_caffemodel(tmp / f"{name}.caffemodel", random_weights_for(load_net(proto), seed=0))
    weights = tmp / f"{name}.safetensors"
    subprocess.run(
        [sys.executable, "-m", "segconvert", "caffe2torch", str(proto), str(model), "-o", str(weights)],
        check=True,
        capture_output=True,
    )
    declared = load_net(proto)
    in_name, _ = net_input(declared)
    net = load_net(proto, model, input_shapes={in_name: (1, 3, size, size)})
    twin_dir = tmp / f"{name}_opencv"
    twin_dir.mkdir()
    cv_proto, cv_model = _write_twin(_Twin(net), twin_dir)
    return {"weights": weights, "cv_proto": cv_proto, "cv_model": cv_model, "size": size}


def _run_child(kind: str, files: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--size", str(files["size"]), "--threads", str(args.threads)]
    cmd += ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    cmd += ["--weights", str(files["weights"]), "--prototxt", str(files["cv_proto"])]
    cmd += ["--caffemodel", str(files["cv_model"]), "--mmap-threshold", str(args.mmap_threshold)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu(args: argparse.Namespace) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        for name in args.nets:
            files = _prepare(name, args.quick, Path(tmp))
            runs: dict[str, list[dict]] = {k: [] for k in args.runners}
            for _ in range(args.repeat):
                for kind in args.runners:
                    runs[kind].append(_run_child(kind, files, args))
            med = {k: statistics.median(r["median_s"] for r in v) for k, v in runs.items()}
            rss = {k: max(r["peak_rss"] for r in v) for k, v in runs.items()}
            by_stage = {
                k: {s: round(b / 2**20) for s, b in v[-1]["peak_rss_by_stage"].items()} for k, v in runs.items()
            }
            results[name] = {
                "input": [1, 3, files["size"], files["size"]],
                "median_s": med,
                "peak_rss_mb": {k: round(v / 2**20) for k, v in rss.items()},
                "peak_rss_mb_by_stage": by_stage,
                **({"fused_vs_eager": med["eager"] / med["fused"]} if {"eager", "fused"} <= med.keys() else {}),
                **(
                    {
                        "fused_vs_opencv": med["opencv"] / med["fused"],
                        "rss_fused_over_opencv": rss["fused"] / rss["opencv"],
                    }
                    if {"opencv", "fused"} <= med.keys()
                    else {}
                ),
            }
    return results


def _gpu(args: argparse.Namespace) -> dict:
    """PSPNet101 Cityscapes protocol over synthetic images on CUDA, bf16 (untested: written without a GPU)."""
    import numpy as np
    import torch

    import segconvert
    from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.graph import load_net

    proto = FIXTURES / "pspnet101_cityscapes_713" / "full.prototxt"
    with tempfile.TemporaryDirectory(prefix="bench-infer-gpu-") as tmp:
        model_file = write_caffemodel(Path(tmp) / "m.caffemodel", random_weights_for(load_net(proto), seed=0))
        weights = Path(tmp) / "m.safetensors"
        cmd = [sys.executable, "-m", "segconvert", "caffe2torch", str(proto), str(model_file), "-o", str(weights)]
        subprocess.run(cmd, check=True, capture_output=True)
        dev = torch.device("cuda")
        model = segconvert.load_model(weights, device="cuda", fuse=True)
    proto_ = get_protocol("pspnet", "cityscapes", crop=713)
    prep, rt = Preprocessing.from_model(model), Runtime(dev, batch_size=args.gpu_batch, amp=False, channels_last=True)
    model = model.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        proto_.predict(model, image, prep, rt).argmax(0)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(args.images):
            img = image if i % 2 == 0 else image[:, ::-1].copy()
            proto_.predict(model, img, prep, rt).argmax(0).cpu()
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
    return {
        "images": args.images,
        "seconds": total,
        "images_per_s": args.images / total,
        "max_memory_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
        "device": torch.cuda.get_device_name(0),
    }


def _keras(args: argparse.Namespace) -> list[dict]:
    """bench_keras.py's rows for the inference form and graph-mode tf_keras, at this run's thread count."""
    cmd = [sys.executable, str(HERE / "bench_keras.py"), "--threads", str(args.threads), "--rounds", "2", "--json"]
    cmd += ["--runtimes", "keras", "eager", "fused_cl", "fused_cl_malloc", "--allocators"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="width-reduced fixture nets (seconds, not minutes)")
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per runner (alternating)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--keras", action="store_true", help="also the Keras families against tf_keras (bench_keras)")
    ap.add_argument("--gpu", action="store_true", help="the CUDA Cityscapes protocol run instead")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--gpu-batch", type=int, default=8)
    ap.add_argument(
        "--mmap-threshold",
        type=float,
        default=1.0,
        help="MiB: glibc's mmap threshold pinned in every runner (segconvert.inference.memory; 0: glibc's default)",
    )
    ap.add_argument("--json", action="store_true")
    for hidden in ("--child", "--weights", "--prototxt", "--caffemodel"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    res = _gpu(args) if args.gpu else _cpu(args)
    res = {"threads": args.threads, "quick": args.quick, "load": os.getloadavg(), "results": res}
    if args.keras and not args.gpu:
        res["keras"] = _keras(args)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    if args.gpu:
        print(json.dumps(res["results"], indent=2))
        return
    print(f"threads {args.threads}, load average {' '.join(f'{v:.2f}' for v in res['load'])}")
    for name, r in res["results"].items():
        m, rss = r["median_s"], r["peak_rss_mb"]
        print(f"{name} {r['input']}: " + ", ".join(f"{k} {m[k]:.3f} s / {rss[k]} MB" for k in m))
        for k in m:
            print(
                f"  {k} peak RSS by stage (MB): "
                + ", ".join(f"{s} {v}" for s, v in r["peak_rss_mb_by_stage"][k].items())
            )
        ratios = [f"{k} {r[k]:.2f}" for k in ("fused_vs_eager", "fused_vs_opencv", "rss_fused_over_opencv") if k in r]
        ratios += [
            f"{k} vs fused {m[k] / m['fused']:.2f}x time"
            for k in ("fused_nchw", "fused_nodnn", "fused_nopyr")
            if k in m and "fused" in m
        ]
        print("  " + ", ".join(ratios))
    for r in res.get("keras", []):
        print(f"keras {r['family']} {'x'.join(map(str, r['size']))} {r['runtime']}: {r['median_ms']:.1f} ms, "
              f"{r['ratio']:.2f}x graph-mode tf_keras's time")  # fmt: skip


if __name__ == "__main__":
    main()
