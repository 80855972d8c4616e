"""ComfyUI entry point: ComfyUI imports this folder (cloned into custom_nodes/) as a package.

V1 mappings work on every ComfyUI version; where ``comfy_api`` exists a V3 ``comfy_entrypoint``
offers the same node ids. LoRaD is also added to ComfyUI's weight-adapter list, so the stock
LoraLoader nodes read LoRaD files; a ComfyUI without that list still gets our own loader.
"""

import importlib.util
import logging
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:  # wadi_core and wadi_comfy are top-level packages of this repository
    sys.path.insert(0, _ROOT)

from wadi_comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_with_comfy  # noqa: E402

if not register_with_comfy():
    logging.getLogger("wadi").info("WaDi: this ComfyUI has no weight-adapter list; the stock LoraLoader will not "
                                   "read LoRaD files, use the WaDi Load LoRaD node")

if importlib.util.find_spec("comfy_api") is not None:  # ComfyUI with the V3 node API
    from wadi_comfy.v3 import comfy_entrypoint  # noqa: E402,F401

WEB_DIRECTORY = "./web"  # per-node help pages (web/docs/<node id>.md), shown by ComfyUI's node library
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
