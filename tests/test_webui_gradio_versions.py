"""The Blocks builder on gradio 4.x (Forge pins 4.40) and 3.41 (AUTOMATIC1111) besides the newest
gradio of the main environment: a separate virtual environment per version holds that gradio (with
the pins its host uses), and wadi's own dependencies come from the main environment, appended after
it on sys.path."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # installs other gradio versions: minutes

ROOT = Path(__file__).resolve().parents[1]
# version -> what to install; huggingface_hub<1: gradio 3/4 import HfFolder, which 1.x removed.
# Gradio 3.41 also needs A1111's fastapi/httpx/pydantic pins to serve pages.
VERSIONS = {
    "4.44.1": ["gradio==4.44.1", "huggingface_hub<1"],
    "3.41.2": ["gradio==3.41.2", "huggingface_hub<1", "fastapi==0.94.0", "httpx==0.24.1", "pydantic<2"],
}

BUILD = """
import sys
sys.path += {extra!r}
import gradio
assert gradio.__version__ == {version!r}, gradio.__version__
from wadi_webui import build_blocks

blocks = build_blocks()
assert isinstance(blocks, gradio.Blocks)
assert isinstance(build_blocks(lambda: ["/sd/models/Stable-diffusion/a.safetensors"]), gradio.Blocks)  # in A1111 / Forge
print("built on gradio", gradio.__version__, "with", len(blocks.fns), "events")
"""


def gradio_python(version: str) -> Path:
    venv = Path(tempfile.gettempdir()) / f"wadi-gradio{version[0]}"  # kept between runs
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import gradio; print(gradio.__version__)"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or probe.stdout.strip() != version:
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                 *VERSIONS[version]], capture_output=True, text=True)
        if result.returncode != 0:
            if os.environ.get("WADI_REQUIRE_BROWSER") == "1":
                pytest.fail(f"cannot install gradio {version}: {result.stderr[-2000:]}")
            pytest.skip(f"cannot install gradio {version} here")
    return python


@pytest.mark.parametrize("version", list(VERSIONS))
def test_blocks_build_on_older_gradio(version):
    pytest.importorskip("gradio")
    python = gradio_python(version)
    extra = [str(ROOT), *site.getsitepackages()]
    result = subprocess.run([str(python), "-c", BUILD.format(extra=extra, version=version)], capture_output=True,
                            text=True, cwd=ROOT, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"built on gradio {version}" in result.stdout
