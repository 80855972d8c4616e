"""The Blocks builder on gradio 4.x (Forge pins 4.40) besides the newest gradio of the main
environment: a separate virtual environment holds gradio 4.44.1, and wadi's own dependencies come
from the main environment, appended after it on sys.path."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRADIO_4 = "gradio==4.44.1"
PINS = ["huggingface_hub<1"]  # gradio 4 imports HfFolder, which huggingface_hub 1.x removed
VENV = Path(tempfile.gettempdir()) / "wadi-gradio4"  # kept between runs

BUILD = """
import sys
sys.path += {extra!r}
import gradio
assert gradio.__version__.startswith("4."), gradio.__version__
from webui_ext import build_blocks
blocks = build_blocks()
assert isinstance(blocks, gradio.Blocks)
print("built on gradio", gradio.__version__, "with", len(blocks.fns), "events")
"""


def gradio4_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import gradio; print(gradio.__version__)"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or not probe.stdout.startswith("4."):
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", GRADIO_4, *PINS],
                                capture_output=True, text=True)
        if result.returncode != 0:
            if os.environ.get("WADI_REQUIRE_BROWSER") == "1":
                pytest.fail(f"cannot install {GRADIO_4}: {result.stderr[-2000:]}")
            pytest.skip(f"cannot install {GRADIO_4} here")
    return python


def test_blocks_build_on_gradio_4():
    pytest.importorskip("gradio")
    python = gradio4_python()
    extra = [str(ROOT), *site.getsitepackages()]
    result = subprocess.run([str(python), "-c", BUILD.format(extra=extra)], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built on gradio 4.44.1" in result.stdout
