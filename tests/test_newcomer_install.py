"""The README's install lines are what CI runs, and the extras resolve with no hidden manual step."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _readme_install_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no opening ```bash block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("pip install")]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_ci_runs_exactly_the_readme_install_lines() -> None:
    readme = _readme_install_lines()
    assert readme, "the README's opening block has no install line"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    ci_installs = [line for line in ci if "pip install" in line and not line.startswith("#")]
    ci_installs = [line for line in ci_installs if "--upgrade pip" not in line]
    assert ci_installs == readme, f".ci/run installs {ci_installs}, the README says {readme}"
    assert not any("--no-deps" in line for line in ci), "a --no-deps step is a hidden manual step"
    assert "python -m pytest" in ci, "CI must run the README's test command"


def test_default_install_has_the_caffe_reference_runtime() -> None:
    core = {_name(r) for r in _pyproject()["dependencies"]}
    assert "opencv-python-headless" in core, "verify/demo need OpenCV dnn for the Caffe proof"


def test_one_extra_brings_tensorflow_tf_slim_and_tf_keras_that_resolve_together() -> None:
    project = _pyproject()
    readme_extras = set()
    for line in _readme_install_lines():
        readme_extras |= {e for m in re.findall(r"\[([^\]]+)\]", line) for e in m.split(",")}
    extras = project["optional-dependencies"]
    tf_extras = [e for e in readme_extras if {"tensorflow", "tf-slim", "tf-keras"} <= {_name(r) for r in extras[e]}]
    assert tf_extras, f"no extra of the README's install lines ({sorted(readme_extras)}) brings TF, tf-slim, tf_keras"
    names = {_name(r) for r in project["dependencies"]} | {_name(r) for r in extras[tf_extras[0]]}
    try:
        requires = importlib.metadata.requires("tf_keras") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tf_keras is not installed here: its metadata cannot be read")
    needed = {_name(r) for r in requires if "extra ==" not in r}
    assert needed <= names | {"setuptools"}, f"tf_keras requires {sorted(needed - names)}, which the extra lacks"
    pins = {_name(line) for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines() if "==" in line}
    missing = {"tensorflow", "tf-slim", "tf-keras", "opencv-python-headless"} - pins
    assert not missing, f".ci/constraints.txt does not pin {sorted(missing)}"
