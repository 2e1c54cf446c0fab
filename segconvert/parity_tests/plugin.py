"""Pytest plugin: command-line options and fixtures for :mod:`segconvert.parity_tests`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

_OPTIONS = {
    "--caffe-prototxt": "deploy/test prototxt of the net to check",
    "--caffe-model": "its .caffemodel",
    "--caffe-dump": "folder with real-Caffe outputs: input.npy, outputs.npz ('<layer>/<top>' keys), meta.json",
    "--converted": "a weights file written by segconvert (caffe2torch/slim2torch/keras2torch)",
    "--caffe-arch": "architecture name for caffe2torch (default: detected)",
    "--caffe-layer-cases": "folder of single-layer cases (net.prototxt, weights.caffemodel, input.npy, outputs.npz)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "segconvert", "segconvert parity suites (python -m pytest --pyargs segconvert.parity_tests)"
    )
    for name, help_ in _OPTIONS.items():
        group.addoption(name, default=None, help=help_)


_OPTION_OF = {
    "prototxt": "--caffe-prototxt",
    "caffemodel": "--caffe-model",
    "dump": "--caffe-dump",
    "converted": "--converted",
    "arch": "--caffe-arch",
    "layer_cases": "--caffe-layer-cases",
}


@dataclass(frozen=True)
class UserFiles:
    """The files given on the command line (None where not given)."""

    prototxt: Path | None
    caffemodel: Path | None
    dump: Path | None
    converted: Path | None
    arch: str | None
    layer_cases: Path | None

    def need(self, *names: str) -> None:
        """Skip the calling test unless every named input was given (and exists)."""
        for name in names:
            value = getattr(self, name)
            option = _OPTION_OF[name]
            if value is None:
                pytest.skip(f"needs {option}")
            if isinstance(value, Path) and not value.exists():
                pytest.fail(f"{option} {value}: no such file or folder")


@pytest.fixture(scope="session")
def user_files(request: pytest.FixtureRequest) -> UserFiles:
    def path(opt: str) -> Path | None:
        value = request.config.getoption(opt)
        return Path(value).expanduser() if value else None

    return UserFiles(
        prototxt=path("--caffe-prototxt"),
        caffemodel=path("--caffe-model"),
        dump=path("--caffe-dump"),
        converted=path("--converted"),
        arch=request.config.getoption("--caffe-arch"),
        layer_cases=path("--caffe-layer-cases"),
    )
