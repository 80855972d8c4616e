"""``wadi``: the command-line entry point. Each command lives in its own module with ``register(subparsers)``
and is imported only when it runs (``wadi --help`` and ``wadi CMD --help`` load no torch); expected failures
(bad paths, mismatched adapters) print one line naming the problem and exit with status 2, without a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from wadi_core import __version__

from .commands import COMMANDS


class Parser(argparse.ArgumentParser):
    """Refusals in one line, like every other wadi error (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s module adds its arguments (every command's, when None), the others are listed."""
    parser = Parser(prog="wadi", description="WaDi: one-step diffusion with LoRaD rotation adapters.")
    parser.add_argument("--version", action="version", version=f"wadi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {module for module, _ in COMMANDS.values()} if command is None else \
        {COMMANDS[command][0]} if command in COMMANDS else set()
    registered: set[str] = set()
    for name, (module, help_line) in COMMANDS.items():
        if module in wanted and module not in registered:
            importlib.import_module(f"{__package__}.{module}").register(sub)
            registered.add(module)
        elif module not in wanted:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command word of an argument list (the first one that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def quiet_model_loading() -> None:
    """transformers and huggingface_hub draw a bar for every model they load, which buries our own progress
    and messages; wadi shows its own progress for the long work."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: the variable was read then
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv) or "").parse_args(argv)
    quiet_model_loading()
    from wadi_core.errors import user_errors

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
