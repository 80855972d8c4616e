"""WaDi's ComfyUI nodes; the repository root's ``__init__.py`` exports them to ComfyUI."""

from .adapter import register_with_comfy
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_with_comfy"]
