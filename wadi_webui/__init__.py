"""The WaDi web UI: Gradio Blocks shared by ``wadi ui`` and the A1111 / Forge extension, and the LoRaD support
for those hosts' LoRA loaders (:mod:`wadi_webui.networks`)."""

__all__ = ["build_blocks"]


def __getattr__(name: str):
    if name == "build_blocks":  # imported on use: the LoRA-loader support needs no Gradio
        from .blocks import build_blocks
        return build_blocks
    raise AttributeError(f"module 'wadi_webui' has no attribute {name!r}")
