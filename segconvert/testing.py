"""Test support: the one place that locates the ground-truth fixtures in ``../shared``.

Tests call :func:`fixture_path`. Without ``../shared`` they are skipped with a clear reason; with
``SEGCONVERT_REQUIRE_FIXTURES=1`` (set in CI) a missing fixture fails the test instead.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENV_DIR = "SEGCONVERT_SHARED"
_ENV_REQUIRE = "SEGCONVERT_REQUIRE_FIXTURES"


def shared_dir() -> Path:
    """``$SEGCONVERT_SHARED``, else ``shared/`` beside the repository checkout."""
    env = os.environ.get(_ENV_DIR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared"


def fixtures_required() -> bool:
    return os.environ.get(_ENV_REQUIRE, "") not in ("", "0")


def fixture_path(*parts: str) -> Path:
    """Path to ``shared/fixtures/<parts>``; skip (or fail under SEGCONVERT_REQUIRE_FIXTURES=1) if absent."""
    import pytest

    path = shared_dir() / "fixtures" / Path(*parts)
    if not path.exists():
        reason = f"ground-truth fixture {path} not found (expected ../shared beside the checkout, or set {_ENV_DIR})"
        if fixtures_required():
            pytest.fail(f"{reason}; {_ENV_REQUIRE}=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return path
