"""AUTOMATIC1111 / Forge / Forge Neo entry point: the host runs every ``scripts/*.py`` of an extension.

Teaches the host's LoRA loader the LoRaD files (``<lora:name:weight>`` in the prompt, see
``wadi_webui/networks.py``) and adds the WaDi tab through ``script_callbacks.on_ui_tabs``; the
extension's ``install.py`` installs what is missing (never torch).
"""

import logging
import os
import sys

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


def on_ui_tabs():
    from wadi_webui import build_blocks
    return [(build_blocks(host_checkpoints), "WaDi", "wadi_tab")]


register_lorad()
script_callbacks.on_before_ui(register_lorad)  # again once every extension has loaded (idempotent)
script_callbacks.on_ui_tabs(on_ui_tabs)
