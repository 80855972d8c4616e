"""``wadi ui``: the WaDi web UI (Distill, Generate, ControlNet, ReVersion, DreamBooth, Analyze) as a standalone
Gradio app."""

from __future__ import annotations

from . import argtypes as A
from .commands import summary


def register(sub) -> None:
    p = sub.add_parser("ui", help=summary("ui"))
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (default: 127.0.0.1 only)")
    p.add_argument("--port", type=A.port, default=7860)
    p.set_defaults(run=run)


def run(args) -> int:
    try:
        from wadi_webui import build_blocks
    except ImportError as err:
        raise ValueError(f"the web UI needs gradio ({err}); install it with: pip install gradio") from None
    blocks = build_blocks()
    blocks.queue().launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port,
                          share=False, inbrowser=False)
    return 0
