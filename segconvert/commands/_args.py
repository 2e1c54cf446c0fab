"""Click parameter types whose failures follow the one-line rule (``error: FILE: reason``, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segconvert.errors import SegconvertError


class ExistingPath(click.ParamType):
    """A path that must exist (a file, or a folder with ``folder=True``), as a :class:`~pathlib.Path`.

    Unlike ``click.Path(exists=True)`` a missing path is a typed error that ``cli.main`` prints as one line
    naming the path (exit 2), not a usage block. ``tf_prefix=True`` also accepts a TF checkpoint prefix
    (``PREFIX.index`` exists). ``text=True`` gives the value as ``str`` (commands whose functions take text).
    """

    name = "path"

    def __init__(self, *, folder: bool = False, tf_prefix: bool = False, text: bool = False) -> None:
        self.folder = folder
        self.tf_prefix = tf_prefix
        self.text = text

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = self._check(value, param)
        return str(path) if self.text else path

    def _check(self, value: Any, param: click.Parameter | None) -> Path:
        path = Path(value).expanduser()
        what = f"{param.human_readable_name}: " if param is not None and param.human_readable_name else ""
        if not path.exists():
            if self.tf_prefix and Path(str(path) + ".index").exists():
                return path
            raise SegconvertError(f"{what}no such {'folder' if self.folder else 'file'}", file=path)
        if self.folder and not path.is_dir():
            raise SegconvertError(f"{what}expected a folder, got a file", file=path)
        if not self.folder and path.is_dir():
            raise SegconvertError(f"{what}is a folder, expected a file", file=path)
        return path


# ------------------------------------------------------------------- options shared by eval, predict, reproduce

DATASET_CHOICE = click.Choice(["voc", "cityscapes", "ade20k"], case_sensitive=False)


class ProtocolChoice(click.Choice):
    """``click.Choice`` over the protocol presets, read on first use: importing them imports torch, which
    ``segconvert --help`` (it imports every command module) should not pay for."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=False)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from segconvert.eval.protocols import PROTOCOLS

        return tuple(PROTOCOLS)

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it; the presets are the choices
        pass


def preprocessing_options(f: Any) -> Any:
    """``--mean``, ``--std``, ``--bgr/--rgb`` (keyword arguments ``mean``, ``std``, ``bgr``)."""
    for opt in reversed(
        [
            click.option(
                "--mean", default=None, help="Mean pixel (0-255, in the input's channel order), e.g. 104,117,123."
            ),
            click.option("--std", default=None, help="Per-channel std (0-255 scale), e.g. 58.4,57.1,57.4."),
            click.option(
                "--bgr/--rgb", "bgr", default=None, help="Channel order the net takes (default: the weights')."
            ),
        ]
    ):
        f = opt(f)
    return f


def _three_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not three comma-separated numbers", param_hint=name) from None
    if len(values) != 3:
        raise click.BadParameter(f"{text!r}: give three values (one per channel)", param_hint=name)
    return values


def resolve_preprocessing(
    weights: Any, meta: dict[str, Any], mean: str | None, std: str | None, bgr: bool | None, recorded: Any = None
) -> Any:
    """The input normalisation: ``recorded`` (default: the metadata's ``preprocessing``) with the values of
    :func:`preprocessing_options` replacing its parts. None recorded and no ``--mean``: a one-line error."""
    from segconvert.errors import WeightsFileError
    from segconvert.eval.protocols import Preprocessing

    base = dict((meta.get("preprocessing") if recorded is None else recorded) or {})
    if not base and mean is None:
        raise WeightsFileError(
            f"the weights record no input preprocessing ({meta.get('arch', '?')} conversion; channel order, "
            "mean and std are missing): give them, e.g. --bgr --mean 104.008,116.669,122.675 [--std S1,S2,S3]",
            file=weights,
            key="preprocessing",
        )
    if mean is not None:
        base["mean"] = _three_floats(mean, "--mean")
    if std is not None:
        base["std"] = _three_floats(std, "--std")
    if bgr is not None:
        base["channel_order"] = "BGR" if bgr else "RGB"
    base.setdefault("channel_order", "RGB")
    return Preprocessing.from_meta(base)


# ------------------------------------------------------------ throughput options (predict; eval's own semantics)


class _Bounded(click.ParamType):
    """An int / float of at least ``low``; a bad value is one line (``error: --opt: reason``, exit 2)."""

    def __init__(self, kind: type, low: float, what: str) -> None:
        self.kind, self.low, self.what = kind, low, what
        self.name = kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        opt = f"--{param.name.replace('_', '-')}: " if param is not None and param.name else ""
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise SegconvertError(f"{opt}{value!r} is not a number; give {self.what}") from None
        if number < self.low:
            raise SegconvertError(f"{opt}{value} is out of range; give {self.what}")
        return number


def _amp_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | bool | None:
    return False if value == "off" else value


AMP_OPTION = click.option(
    "--amp",
    type=click.Choice(["bf16", "fp16", "off"]),
    default=None,
    callback=_amp_value,
    help="Autocast dtype of the forwards (default: fp16 on CUDA, off on the CPU; fp16 needs a GPU).",
)
CHECK_OPTION = click.option(
    "--check",
    is_flag=True,
    help="Verify the fused model against the plain one on the weights' input at load (every folded layer, and "
    "PSPNet's pyramid head path, within 1e-5 x its magnitude, else a one-line error naming the layer).",
)
COMPILE_OPTION = click.option(
    "--compile", "compile_", is_flag=True, help="torch.compile the inference form (compile time in the first images)."
)


def check_amp(amp: str | bool | None, device: Any) -> None:
    """``--amp fp16`` on a CPU as one line (exit 2), before any forward."""
    if isinstance(amp, str):
        from segconvert.inference.prepare import amp_dtype

        try:
            amp_dtype(amp, device)
        except ValueError as exc:
            raise SegconvertError(f"--amp {amp}: {exc}") from None


CHANNELS_LAST_OPTION = click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="NHWC memory for weights and crops (default: on with the inference form, on every device; with "
    "--no-fuse on CUDA only).",
)


def throughput_options(f: Any) -> Any:
    """``--workers N``, ``--batch-memory MiB`` and ``--channels-last/--no-channels-last`` as ``segconvert eval``
    reads them (keyword arguments ``workers``, ``batch_memory``, ``channels_last``); out-of-range values are
    one-line errors raised while the options parse."""
    for opt in reversed(
        [
            CHANNELS_LAST_OPTION,
            click.option(
                "--batch-memory",
                type=_Bounded(float, 1, "a budget of at least 1 MiB"),
                default=None,
                help="MiB: crops per forward from this budget, measured on the first crop (instead of --batch-size).",
            ),
            click.option(
                "--workers",
                type=_Bounded(int, 0, "0 (decode in this process) or more worker processes"),
                default=None,
                help="Processes decoding images (default: half the CPUs, at most 4; 0: in the main process).",
            ),
        ]
    ):
        f = opt(f)
    return f
