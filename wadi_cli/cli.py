"""``wadi``: the command-line entry point. Each command lives in its own module with
``register(subparsers)``; expected failures (bad paths, mismatched adapters) print one line
naming the problem and exit with status 2, without a traceback."""

from __future__ import annotations

import argparse
import os
import sys

from wadi_core import __version__
from wadi_core.errors import user_errors

from . import (analyze_cmd, controlnet_cmd, demo_cmd, distill, dreambooth_cmd, eval_cmd, generate_cmd, highres_cmd,
               inspect_cmd, merge_cmd, presets_cmd, reversion_cmd, ui_cmd)

COMMANDS = (demo_cmd, distill, generate_cmd, eval_cmd, merge_cmd, analyze_cmd, controlnet_cmd, highres_cmd,
            reversion_cmd, dreambooth_cmd, inspect_cmd, presets_cmd, ui_cmd)


class Parser(argparse.ArgumentParser):
    """Refusals in one line, like every other wadi error (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wadi", description="WaDi: one-step diffusion with LoRaD rotation adapters.")
    parser.add_argument("--version", action="version", version=f"wadi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def quiet_model_loading() -> None:
    """transformers and huggingface_hub draw a bar for every model they load, which buries our own progress
    and messages; wadi shows its own progress for the long work."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: the variable was read then
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_model_loading()
    try:
        return args.run(args) or 0
    except user_errors() as err:
        print(f"wadi {args.command}: error: {one_line(err)}", file=sys.stderr)
    except OSError as err:  # the machine's side: disk full, permissions, a file where a folder should be
        from wadi_core.fileio import describe_os_error
        print(f"wadi {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
    except MemoryError:
        print(f"wadi {args.command}: error: out of memory; lower --batch-size or use a smaller model",
              file=sys.stderr)
    return 2


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
