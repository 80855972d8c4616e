"""install.py (run by ComfyUI-Manager and A1111): lists only what is missing, never torch."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_install():
    spec = importlib.util.spec_from_file_location("wadi_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_never_name_torch():
    install = load_install()
    names = [s.split(">")[0].split("=")[0].strip().lower() for s in install.read_requirements()]
    assert names and not set(names) & install.NEVER


def test_only_missing_or_old_packages_are_installed():
    install = load_install()
    assert install.missing(["safetensors>=0.4", "numpy"]) == []
    assert install.missing(["safetensors>=999"]) == ["safetensors>=999"]
    assert install.missing(["surely-not-a-package-wadi"]) == ["surely-not-a-package-wadi"]
    assert install.missing(["torch>=999", "torchvision"]) == []


def test_dry_run_reports(capsys):
    install = load_install()
    assert install.main(["--dry-run"]) == 0
    assert "[WaDi]" in capsys.readouterr().out
