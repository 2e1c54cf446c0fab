"""``python -m segconvert`` runs the CLI (what ``torchrun -m segconvert`` executes on every rank)."""

from __future__ import annotations

import subprocess
import sys


def test_python_m_segconvert_lists_the_pspnet_presets() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "segconvert", "recipes", "pspnet-semseg-voc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "hszhao/semseg@7192f92" in out.stdout and "data.crop_size" in out.stdout and "[473, 473]" in out.stdout
