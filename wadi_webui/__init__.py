"""The WaDi web UI: Gradio Blocks shared by ``wadi ui`` and the A1111 / Forge extension."""

from .blocks import build_blocks

__all__ = ["build_blocks"]
