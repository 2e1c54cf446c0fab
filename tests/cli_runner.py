"""Running the ``segconvert`` command line from the tests: in this process, or as a fresh process."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from typing import NamedTuple


class CliResult(NamedTuple):
    """Unpacks as ``code, out, err``; also reads like a ``CompletedProcess`` (``.returncode``...)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliResult:
    """``segconvert.cli.main`` in this process (no interpreter / torch start-up), output captured."""
    from segconvert.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_process(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m segconvert.cli ARGS`` as a fresh process (the real entry point and its exit status)."""
    cmd = [sys.executable, "-m", "segconvert.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
