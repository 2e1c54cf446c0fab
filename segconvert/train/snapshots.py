"""Weight snapshots of a training run: ``OUT/iter_<N>.safetensors`` every ``snapshot`` iterations, ``OUT/final``.

Each is a converted-weights file (:func:`segconvert.weights.store.save_converted`) with the metadata a
conversion has (``arch``, ``config``, ``source.files`` with sha256 of the solver, the train net, the initial
weights and the data files), so ``load_model``, ``segconvert eval``, ``export-onnx`` and ``verify`` take it, plus
``training``: the iteration, max_iter, the solver's values and the optimizer form.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from segconvert.weights.provenance import source_entry
from segconvert.weights.store import save_converted

__all__ = ["SnapshotHook", "snapshot_meta"]

# what the DeepLab-v2 train nets feed (DataTransformer: BGR, minus this mean), as caffe2torch records it
_DEEPLAB_PREPROCESSING = {"channel_order": "BGR", "mean": [104.008, 116.669, 122.675], "std": None, "scale": 1.0}


def _data_files(data: Any) -> list[Path]:
    files = [getattr(data, "list_path", None), *getattr(data, "files", [])]
    return [Path(p) for p in files if p is not None]


def _inference_config(trainer: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The model config as the TEST phase runs it: a BatchNorm without ``use_global_stats`` in the prototxt
    uses its (moving-average) statistics, as Caffe's TEST phase does; training used batch statistics."""
    if getattr(trainer.net.model, "arch_name", None) != "caffe_generic":
        return config
    net = trainer.net.net
    config = copy.deepcopy(config)
    for spec in config.get("layers", []):
        if spec["type"] == "BatchNorm" and spec["name"] in net:
            p = net.layer(spec["name"]).param.batch_norm_param
            spec["params"]["use_global_stats"] = bool(p.use_global_stats) if p.HasField("use_global_stats") else True
    return config


def snapshot_meta(trainer: Any, sources: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
    """The metadata of a snapshot of ``trainer`` now."""
    model = trainer.net.model
    config = _inference_config(trainer, getattr(model, "config", {}))
    solver = trainer.solver
    values = {k: v for k, v in solver.to_dict().items() if k != "resolved_net"}
    arch = getattr(model, "arch_name", type(model).__name__)
    return {
        "arch": arch,
        "config": config,
        "num_classes": config.get("num_classes"),
        "input_size": config.get("input_size"),
        "preprocessing": _DEEPLAB_PREPROCESSING if arch.startswith("deeplab") else None,
        "source": {"format": "caffe", "net_name": getattr(trainer.net.net, "name", ""), "files": sources},
        "training": {
            "iteration": int(trainer.iteration),
            "max_iter": int(trainer.max_iter),
            "final": bool(final),
            "solver_file": solver.path.name if solver.path is not None else None,
            "model_path": getattr(trainer.net, "arch_path", None),
            "solver": values,
            "optimizer": {
                "form": trainer.optimizer.defaults["form"],
                "arithmetic": trainer.optimizer.defaults["arithmetic"],
            },
        },
    }


class SnapshotHook:
    """Trainer hook writing snapshots into ``out_dir`` (``every``: the solver's ``snapshot``; 0 = final only)."""

    def __init__(self, out_dir: str | Path, every: int = 0) -> None:
        self.out_dir, self.every = Path(out_dir), int(every)
        self.sources: list[dict[str, Any]] | None = None
        self.written: list[Path] = []

    def _sources(self, trainer: Any) -> list[dict[str, Any]]:
        if self.sources is None:
            setup = getattr(trainer, "setup", None)
            files = setup.source_files() if setup is not None else []
            files += _data_files(trainer.data)
            self.sources = [source_entry(p) for p in dict.fromkeys(files)]
        return self.sources

    def on_train_start(self, trainer: Any) -> None:
        self._sources(trainer)

    def save(self, trainer: Any, name: str, *, final: bool) -> Path:
        path = self.out_dir / name
        state = trainer.net.model.state_dict()
        save_converted(path, state, snapshot_meta(trainer, self._sources(trainer), final=final))
        self.written.append(path)
        return path

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if self.every > 0 and trainer.iteration % self.every == 0:
            self.save(trainer, f"iter_{trainer.iteration}.safetensors", final=False)

    def on_train_end(self, trainer: Any) -> None:
        if not trainer.stopped_early:
            self.save(trainer, "final.safetensors", final=True)
