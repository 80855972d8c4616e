"""``wadi``: the command-line entry point. Each command lives in its own module with
``register(subparsers)``; expected failures (bad paths, mismatched adapters) print one line
naming the problem and exit with status 2, without a traceback."""

from __future__ import annotations

import argparse
import sys

from wadi_core import __version__

from . import (analyze_cmd, controlnet_cmd, demo_cmd, distill, dreambooth_cmd, eval_cmd, generate_cmd, highres_cmd,
               inspect_cmd, merge_cmd, presets_cmd, reversion_cmd, ui_cmd)

COMMANDS = (demo_cmd, distill, generate_cmd, eval_cmd, merge_cmd, analyze_cmd, controlnet_cmd, highres_cmd,
            reversion_cmd, dreambooth_cmd, inspect_cmd, presets_cmd, ui_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wadi", description="WaDi: one-step diffusion with LoRaD rotation adapters.")
    parser.add_argument("--version", action="version", version=f"wadi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    from wadi_core.keys import KeyConversionError
    from wadi_core.lorad.io import AdapterError
    from wadi_core.models import CheckpointError
    from wadi_core.prompts import PromptFileError
    from wadi_core.shapes.components import ModelFolderError
    from .distill import Diverged
    return (Diverged, AdapterError, CheckpointError, KeyConversionError, PromptFileError, ModelFolderError, ValueError,
            FileNotFoundError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except user_errors() as err:
        print(f"wadi {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
