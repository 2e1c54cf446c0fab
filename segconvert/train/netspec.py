"""The nets a solver builds, chosen as Caffe's ``Solver::InitTrainNet`` / ``InitTestNets`` choose them.

- Train net: ``net`` / ``train_net`` (a file) or the inline ``net_param`` / ``train_net_param``, with the
  NetState ``phase: TRAIN``, then the net's own ``state``, then the solver's ``train_state`` merged on top.
- Test nets, in Caffe's order: each ``test_net_param``, each ``test_net`` file, then as many instances of the
  generic ``net`` / ``net_param`` as ``test_iter`` entries remain; each with ``phase: TEST``, its own ``state``
  and the ``test_state`` of its index merged on top. The include/exclude rules then select each net's layers.

An inline net names the solver file in messages (its layers' lines are found there) and its data paths are
resolved relative to the solver's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_schema import message_class
from segconvert.formats.prototxt import read_prototxt

from .solver import SolverConfig, resolve_path

__all__ = ["NetSpec", "train_net_spec", "test_net_specs", "load_spec"]

_PHASE_NAMES = {0: "TRAIN", 1: "TEST"}


@dataclass
class NetSpec:
    """One net of a solver: its ``NetParameter`` (state merged), where it came from, and its phase."""

    param: Any
    source: Path | None  # the prototxt, or the solver file for an inline net
    phase: str
    what: str  # Caffe's wording: "net file: x", "test_net_param", ...
    inline: bool = False
    notes: list[str] = field(default_factory=list)  # ignored unknown data-layer fields (formats.prototxt)


def _as_net_schema(msg: Any, kind: str) -> Any:
    """A message of the solver's descriptor pool as the net schema's class (same fields, other pool)."""
    out = message_class(kind)()
    out.ParseFromString(msg.SerializeToString())
    return out


def _with_state(param: Any, phase: int, extra: Any | None) -> tuple[Any, str]:
    state = message_class("NetState")()
    state.phase = phase
    state.MergeFrom(param.state)
    if extra is not None:
        state.MergeFrom(_as_net_schema(extra, "NetState"))
    param.state.CopyFrom(state)
    return param, _PHASE_NAMES[int(state.phase)]


def _read(cfg: SolverConfig, name: str, key: str, notes: list[str]) -> tuple[Any, Path]:
    path = resolve_path(name, cfg.path.parent if cfg.path is not None else None)
    if path is None:
        raise CaffeFormatError(
            f"{key} {name!r} not found (relative to the working directory or the solver)", **cfg.where(key)
        )
    return read_prototxt(path, notes), path


def train_net_spec(cfg: SolverConfig) -> NetSpec:
    """The solver's train net (see the module docstring)."""
    msg, has = cfg.message, cfg.set_fields.__contains__
    notes: list[str] = []
    for kind in ("train_net_param", "net_param"):
        if has(kind):
            param = _as_net_schema(getattr(msg, kind), "NetParameter")
            param, phase = _with_state(param, 0, msg.train_state if msg.HasField("train_state") else None)
            return NetSpec(param, cfg.path, phase, kind, inline=True)
    kind = "train_net" if has("train_net") else "net"
    if cfg.net_path is not None:
        param, path = read_prototxt(cfg.net_path, notes), cfg.net_path
    else:
        param, path = _read(cfg, cfg.fields[kind], kind, notes)
    param, phase = _with_state(param, 0, msg.train_state if msg.HasField("train_state") else None)
    return NetSpec(param, path, phase, f"{kind} file: {cfg.fields[kind]}", notes=notes)


def test_net_specs(cfg: SolverConfig) -> list[NetSpec]:
    """The solver's test nets, one per ``test_iter`` entry, in Caffe's order (module docstring)."""
    msg, has = cfg.message, cfg.set_fields.__contains__
    out: list[tuple[Any, Path | None, str, bool]] = []
    for i, p in enumerate(msg.test_net_param):
        out.append((_as_net_schema(p, "NetParameter"), cfg.path, f"test_net_param #{i}", True))
    for name in cfg.fields["test_net"]:
        param, path = _read(cfg, name, "test_net", [])
        out.append((param, path, f"test_net file: {name}", False))
    remaining = len(cfg.fields["test_iter"]) - len(out)
    for _ in range(max(0, remaining)):
        if has("net_param"):
            out.append((_as_net_schema(msg.net_param, "NetParameter"), cfg.path, "net_param", True))
        elif has("net"):
            param, path = _read(cfg, cfg.fields["net"], "net", [])
            out.append((param, path, f"net file: {cfg.fields['net']}", False))
    specs = []
    for i, (param, path, what, inline) in enumerate(out):
        extra = msg.test_state[i] if len(msg.test_state) else None
        param, phase = _with_state(param, 1, extra)
        specs.append(NetSpec(param, path, phase, what, inline))
    return specs


def load_spec(spec: NetSpec, caffemodel: Any = None) -> Any:
    """The :class:`~segconvert.graph.Net` of ``spec`` in its phase (with ``caffemodel``'s weights, if given)."""
    from segconvert.graph import load_net

    net = load_net(spec.source, caffemodel, phase=spec.phase, net_param=spec.param)
    net.warnings.extend(spec.notes)
    return net
