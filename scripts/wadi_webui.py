"""AUTOMATIC1111 / Forge entry point: A1111 runs every ``scripts/*.py`` of an extension.

Adds the WaDi tab (Distill, Generate, Analyze) through ``script_callbacks.on_ui_tabs``; the
extension's ``install.py`` installs what is missing (never torch).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # wadi_core, wadi_cli and wadi_webui are top-level packages of the extension
    sys.path.insert(0, _ROOT)

from modules import script_callbacks  # noqa: E402  (A1111 / Forge)


def on_ui_tabs():
    from wadi_webui import build_blocks
    return [(build_blocks(), "WaDi", "wadi_tab")]


script_callbacks.on_ui_tabs(on_ui_tabs)
