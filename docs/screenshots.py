"""Take the screenshots the guides show, from the running programs: the web UI's Distill, Generate and DreamBooth
tabs (``wadi ui``), and a bundled workflow in a real ComfyUI with the node pack.

    python docs/screenshots.py --student wadi-demo/distill/student.safetensors

Needs what ``scripts/setup.sh --test`` installs (gradio, Playwright, ComfyUI 0.3.75) and Debian's chromium
(``apt-get install chromium``). Writes docs/webui_distill.png, docs/webui_generate.png, docs/webui_dreambooth.png,
docs/comfyui_templates.png and docs/comfyui_onestep_lorad.png (``--only webui`` or ``--only comfyui``: one half);
a few minutes on a 2-core CPU (a 16-step distillation and a 40-step DreamBooth run happen on the way).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
WORKFLOW = ROOT / "example_workflows" / "wadi_onestep_lorad.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def wait_for_text(page, elem_id: str, words: tuple[str, ...], seconds: float = 600) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = page.locator(f"#{elem_id}").inner_text()
        if any(w in text for w in words):
            return text
        time.sleep(1)
    raise RuntimeError(f"#{elem_id} never showed {words}")


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def run_and_shoot(page, start: str, status: str, image: str, png: str) -> None:
    """Press ``start``, wait until ``status`` says the job ended and ``image`` shows, then take ``png``."""
    page.locator(f"#{start}").click()
    wait_for_text(page, status, ("finished", "failed", "images/s", "Error"), 900)
    page.locator(f"#{image} img").first.wait_for(timeout=60_000)
    page.screenshot(path=str(DOCS / png))


def web_ui(browser, work: Path, student: Path) -> None:
    port = free_port()
    with open(work / "ui.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "wadi_cli.cli", "ui", "--port", str(port)], cwd=work,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False"))
        try:
            wait_for(f"http://127.0.0.1:{port}", process)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            print("web UI: a 16-step distillation ...", flush=True)
            page.get_by_role("tab", name="Distill").click()
            fill(page, "wadi_steps", 16)
            fill(page, "wadi_distill_out", work / "run")
            run_and_shoot(page, "wadi_start", "wadi_distill_status", "wadi_loss", "webui_distill.png")

            print("web UI: one-step images beside the teacher ...", flush=True)
            page.get_by_role("tab", name="Generate").click()
            fill(page, "wadi_adapters", student)
            fill(page, "wadi_prompt", "a blue square above a yellow triangle")
            page.get_by_label("Also the multi-step teacher (25 steps, guidance 3)").check()
            run_and_shoot(page, "wadi_generate", "wadi_generate_status", "wadi_gallery", "webui_generate.png")

            print("web UI: a 40-step DreamBooth run ...", flush=True)
            page.get_by_role("tab", name="DreamBooth").click()
            fill(page, "wadi_db_student", student)
            fill(page, "wadi_db_steps", 40)
            fill(page, "wadi_db_out", work / "subject")
            run_and_shoot(page, "wadi_db_start", "wadi_db_status", "wadi_db_gallery", "webui_dreambooth.png")
        finally:
            process.terminate()
            process.wait(timeout=60)


def comfyui(browser, work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_support import ComfyServer  # the same ComfyUI the tests run, with this repository as a node pack

    print("ComfyUI: the one-step workflow ...", flush=True)
    server = ComfyServer(work / "comfy")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        templates = page.get_by_text("All Templates").first  # a first visit opens the template browser
        templates.wait_for(timeout=60_000)
        page.get_by_text("wadi", exact=True).first.click()  # the pack's own templates
        time.sleep(2)
        page.screenshot(path=str(DOCS / "comfyui_templates.png"))
        page.locator("[role=dialog] button.right-6").first.click()  # the browser's close button (top right)
        page.evaluate("workflow => window.app.loadGraphData(workflow)", json.loads(WORKFLOW.read_text()))
        time.sleep(2)
        page.mouse.click(700, 600)  # focus the canvas (an empty spot), then "." fits the graph into view
        page.keyboard.press(".")
        time.sleep(3)  # the canvas draws on the next frames
        page.screenshot(path=str(DOCS / "comfyui_onestep_lorad.png"))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, help="a student of the embedded teacher (for the web UI)")
    parser.add_argument("--only", choices=("webui", "comfyui"))
    args = parser.parse_args()
    if args.only != "comfyui" and args.student is None:
        parser.error("the web UI's screenshots need --student FILE (e.g. wadi-demo/distill/student.safetensors)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        if args.only != "comfyui":
            web_ui(browser, Path(tmp), args.student.resolve())
        if args.only != "webui":
            comfyui(browser, Path(tmp))
        browser.close()
    print("done: the pictures are in docs/")


if __name__ == "__main__":
    main()
