"""AUTOMATIC1111 / Forge / Forge Neo entry point: the host runs every ``scripts/*.py`` of an extension.

Teaches the host's LoRA loader the LoRaD files (``<lora:name:weight>`` in the prompt, see
``wadi_webui/networks.py``) and adds the WaDi tab through ``script_callbacks.on_ui_tabs``; the
extension's ``install.py`` installs what is missing (never torch).
"""

import json
import logging
import os
import sys
from pathlib import Path

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # wadi_core and wadi_webui are top-level packages of the extension
    sys.path.insert(0, _ROOT)

from modules import script_callbacks  # noqa: E402  (A1111 / Forge)

from wadi_webui import networks  # noqa: E402


def register_lorad():
    host = networks.register()
    if host is None:
        logging.getLogger("wadi").warning("WaDi: no LoRA loader found (is the built-in Lora extension disabled?); "
                                          "<lora:...> cannot use LoRaD files, the WaDi tab still works")


def host_checkpoints() -> list[str]:
    """The files of the checkpoints the host lists (models/Stable-diffusion and --ckpt-dir), for the tab's model
    fields."""
    from modules import sd_models
    return [info.filename for info in sd_models.checkpoints_list.values()]


def host_tokenizers() -> list[Path]:
    """The CLIP tokenizer folders the host ships: Forge and Forge Neo keep those of the models they load offline in
    backend/huggingface/<repo>/tokenizer (their loader reads them there). A1111 keeps CLIP's in the Hugging Face
    cache, where wadi looks anyway."""
    from modules import paths_internal
    root = Path(paths_internal.script_path) / "backend" / "huggingface"
    found = []
    for config in sorted(root.glob("*/*/tokenizer/tokenizer_config.json")):
        try:
            clip = json.loads(config.read_text()).get("tokenizer_class") == "CLIPTokenizer"
        except (OSError, ValueError):
            clip = False
        if clip and (config.parent / "vocab.json").is_file():
            found.append(config.parent)
    return found


def on_ui_tabs():
    from wadi_core.models.single_file import add_tokenizer_folder
    from wadi_webui import build_blocks
    for folder in host_tokenizers():  # the host's checkpoints then need nothing beside them
        add_tokenizer_folder(folder)
    return [(build_blocks(host_checkpoints), "WaDi", "wadi_tab")]


register_lorad()
script_callbacks.on_before_ui(register_lorad)  # again once every extension has loaded (idempotent)
script_callbacks.on_ui_tabs(on_ui_tabs)
