"""Pytest plugin: command-line options and fixtures for :mod:`segconvert.parity_tests`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# UserFiles field -> (command-line option, help); paths are every field but ``arch``.
_OPTIONS = {
    "prototxt": ("--caffe-prototxt", "deploy/test prototxt of the net to check"),
    "caffemodel": ("--caffe-model", "its .caffemodel"),
    "dump": (
        "--caffe-dump",
        "folder with real-Caffe outputs: input.npy, outputs.npz ('<layer>/<top>' keys), meta.json",
    ),
    "converted": ("--converted", "a weights file written by segconvert (caffe2torch/slim2torch/keras2torch)"),
    "tf_checkpoint": ("--tf-checkpoint", "the TF checkpoint (prefix, .index or V1 .ckpt) a --converted file came from"),
    "keras_h5": ("--keras-h5", "the Keras .h5 a --converted file came from"),
    "arch": ("--caffe-arch", "architecture name for caffe2torch (default: detected)"),
    "layer_cases": (
        "--caffe-layer-cases",
        "folder of single-layer cases (net.prototxt, weights.caffemodel, input.npy, outputs.npz)",
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "segconvert", "segconvert parity suites (python -m pytest --pyargs segconvert.parity_tests)"
    )
    for option, help_ in _OPTIONS.values():
        group.addoption(option, default=None, help=help_)


@dataclass(frozen=True)
class UserFiles:
    """The files given on the command line (None where not given)."""

    prototxt: Path | None
    caffemodel: Path | None
    dump: Path | None
    converted: Path | None
    tf_checkpoint: Path | None
    keras_h5: Path | None
    arch: str | None
    layer_cases: Path | None

    def need(self, *names: str) -> None:
        """Skip the calling test unless every named input was given (and exists)."""
        for name in names:
            value = getattr(self, name)
            option = _OPTIONS[name][0]
            if value is None:
                pytest.skip(f"needs {option}")
            if isinstance(value, Path) and not (value.exists() or Path(f"{value}.index").exists()):
                pytest.fail(f"{option} {value}: no such file or folder")


@pytest.fixture(scope="session")
def user_files(request: pytest.FixtureRequest) -> UserFiles:
    values = {field: request.config.getoption(option) for field, (option, _) in _OPTIONS.items()}
    paths = {k: v if k == "arch" else Path(v).expanduser() if v else None for k, v in values.items()}
    return UserFiles(**paths)
