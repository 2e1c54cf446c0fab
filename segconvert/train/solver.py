"""``solver.prototxt`` -> :class:`SolverConfig`: every ``SolverParameter`` field, checked, paths resolved.

Parsing uses the protobuf text format with Caffe's ``SolverParameter`` (:mod:`segconvert.formats.caffe_solver_schema`),
so an unknown field or a value of the wrong type is a :class:`~segconvert.errors.CaffeFormatError` naming
``file:line:column``. Values Caffe itself rejects (unknown ``type``, ``lr_policy``, ``regularization_type``,
missing ``base_lr`` ...) name the line of the offending field. The train net (``net`` / ``train_net``, or an
inline ``net_param`` / ``train_net_param``) is resolved as Caffe resolves it (the working directory) and then,
as a convenience Caffe lacks, relative to the solver file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_solver_schema import SOLVER_FIELDS, solver_message_class

__all__ = ["SolverConfig", "read_solver", "parse_solver", "resolve_path", "SOLVER_TYPES", "LR_POLICIES"]

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}
_LOC = re.compile(r"^\s*(\d+):(\d+)\s*:\s*")
# what each lr policy reads (besides base_lr), as Caffe's GetLearningRate
_POLICY_NEEDS = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power", "max_iter"),
    "sigmoid": ("gamma", "stepsize"),
}


@dataclass
class SolverConfig:
    """A Caffe solver, as plain values (float32 fields kept as the float32 value read back as a Python float)."""

    path: Path | None
    fields: dict[str, Any]  # every SolverParameter field, defaults filled in (messages as text)
    set_fields: set[str] = field(default_factory=set)  # the fields the file sets
    net_path: Path | None = None  # the train net file, resolved
    net_param: Any = None  # an inline NetParameter (net_param / train_net_param), if any
    lines: dict[str, int] = field(default_factory=dict)  # field -> line in the file (first occurrence)
    message: Any = None  # the parsed SolverParameter (inline nets, train_state / test_state)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    @property
    def solver_type(self) -> str:
        return self.fields["type"]

    def where(self, name: str) -> dict[str, Any]:
        """``file``/``line`` keywords for an error about field ``name``."""
        return {"file": self.path, "line": self.lines.get(name)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values of every field the file sets, plus the resolved net path."""
        out = {k: self.fields[k] for k in sorted(self.set_fields)}
        if self.net_path is not None:
            out["resolved_net"] = str(self.net_path)
        return out


def _field_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    depth = 0
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0]
        m = re.match(r"\s*([A-Za-z_]\w*)\s*[:{]", stripped)
        if m and depth == 0:
            lines.setdefault(m.group(1), i)
        depth += stripped.count("{") - stripped.count("}")
    return lines


def resolve_path(name: str, base: Path | None) -> Path | None:
    """Caffe's rule (relative to the working directory), then relative to ``base``; None when neither exists."""
    p = Path(name)
    if p.exists():
        return p
    if base is not None and not p.is_absolute() and (base / p).exists():
        return base / p
    return None


def parse_solver(text: str, path: str | os.PathLike[str] | None = None) -> SolverConfig:
    """Parse solver text; see the module docstring for the checks."""
    where = Path(path) if path is not None else None
    msg = solver_message_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        line, column, message = exc.GetLine(), exc.GetColumn(), str(exc)
        m = _LOC.match(message)
        if m:
            line, column, message = int(m.group(1)), int(m.group(2)), message[m.end() :]
        message = message.replace("segconvert.caffe_solver.", "").replace("segconvert.caffe.", "")
        raise CaffeFormatError(message, file=where or "<solver>", line=line, column=column) from None
    fields: dict[str, Any] = {}
    for name, _, label, ftype, _default in SOLVER_FIELDS:
        value = getattr(msg, name)
        if label == "r":
            value = (
                [text_format.MessageToString(v, as_one_line=True) for v in value]
                if ftype.startswith("msg:")
                else list(value)
            )
        elif ftype.startswith("msg:"):
            value = text_format.MessageToString(value, as_one_line=True) if msg.HasField(name) else None
        elif ftype.startswith("enum:"):
            value = msg.DESCRIPTOR.fields_by_name[name].enum_type.values_by_number[value].name
        fields[name] = value
    set_fields = {fd.name for fd, _ in msg.ListFields()}
    cfg = SolverConfig(path=where, fields=fields, set_fields=set_fields, lines=_field_lines(text), message=msg)
    if "type" not in set_fields and "solver_type" in set_fields:
        fields["type"] = _LEGACY_TYPES[msg.solver_type]
    _check(cfg, msg)
    return cfg


def _check(cfg: SolverConfig, msg: Any) -> None:
    f, has = cfg.fields, cfg.set_fields.__contains__

    def fail(message: str, name: str) -> CaffeFormatError:
        return CaffeFormatError(message, file=cfg.path or "<solver>", line=cfg.lines.get(name))

    if f["type"] not in SOLVER_TYPES:
        raise fail(f"unknown solver type {f['type']!r} (Caffe's: {', '.join(SOLVER_TYPES)})", "type")
    nets = [n for n in ("net", "net_param", "train_net", "train_net_param") if has(n)]
    if len(nets) != 1:
        what = "no train net (set net or train_net)" if not nets else f"more than one train net: {', '.join(nets)}"
        raise fail(what, nets[1] if len(nets) > 1 else "")
    if not has("base_lr"):
        raise fail("base_lr is required", "")
    if not has("lr_policy"):
        raise fail("lr_policy is required (Caffe has no default)", "")
    policy = f["lr_policy"]
    if policy not in LR_POLICIES:
        raise fail(f"unknown lr_policy {policy!r} (Caffe's: {', '.join(LR_POLICIES)})", "lr_policy")
    for need in _POLICY_NEEDS[policy]:
        if not has(need):
            raise fail(f"lr_policy {policy!r} needs {need}", "lr_policy")
    if has("stepsize") and f["stepsize"] <= 0:
        raise fail("stepsize must be positive", "stepsize")
    if any(b <= a for a, b in zip(f["stepvalue"], f["stepvalue"][1:], strict=False)):
        raise fail("stepvalue must increase", "stepvalue")
    if f["regularization_type"] not in ("L2", "L1"):
        raise fail(f"unknown regularization_type {f['regularization_type']!r} (L2 or L1)", "regularization_type")
    if f["iter_size"] < 1:
        raise fail("iter_size must be at least 1", "iter_size")
    if not has("max_iter"):
        raise fail("max_iter is required", "")
    if f["average_loss"] < 1:
        raise fail("average_loss must be at least 1", "average_loss")
    _check_test_nets(cfg, fail)
    base = cfg.path.parent if cfg.path is not None else None
    kind = nets[0]
    if kind in ("net", "train_net"):
        resolved = resolve_path(f[kind], base)
        if resolved is None:
            raise fail(f"{kind} {f[kind]!r} not found (relative to the working directory or the solver)", kind)
        cfg.net_path = resolved
    else:
        cfg.net_param = getattr(msg, kind)


def _check_test_nets(cfg: SolverConfig, fail: Any) -> None:
    """Caffe's ``InitTestNets`` checks: one ``test_iter`` per test net (more with a generic ``net``), one
    ``test_state`` per test net if any, a positive ``test_interval`` when there are test nets."""
    f = cfg.fields
    generic = "net" in cfg.set_fields or "net_param" in cfg.set_fields
    explicit = len(f["test_net"]) + len(f["test_net_param"])
    n_iter = len(f["test_iter"])
    if (n_iter < explicit) if generic else (n_iter != explicit):
        where = "test_iter" if "test_iter" in cfg.set_fields else ("test_net" if f["test_net"] else "test_net_param")
        raise fail(f"test_iter must be specified for each test network ({n_iter} test_iter, {explicit} "
                   f"test_net/test_net_param{' + the generic net' if generic else ''})", where)  # fmt: skip
    if len(f["test_state"]) and len(f["test_state"]) != n_iter:
        raise fail(f"test_state must be unspecified or specified once per test net ({n_iter})", "test_state")
    if any(n < 0 for n in f["test_iter"]):
        raise fail("test_iter must not be negative", "test_iter")
    if n_iter and f["test_interval"] <= 0:
        raise fail("test nets need a positive test_interval (Caffe: CHECK_GT(test_interval, 0))", "test_iter")


def read_solver(path: str | os.PathLike[str]) -> SolverConfig:
    """Read and check a ``solver.prototxt`` (see :func:`parse_solver`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaffeFormatError(f"cannot read solver: {exc.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise CaffeFormatError("not a text solver prototxt (binary data)", file=path) from None
    return parse_solver(text, path)
