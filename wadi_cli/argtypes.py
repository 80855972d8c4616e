"""Number types for the command line: argparse turns a refusal into one ``error: argument --X: ...`` line
and exit status 2, before any work. Plain ``float`` would let ``nan`` and ``inf`` through, and ``int``
would let 0 reach a ``range()`` step."""

from __future__ import annotations

import argparse
import math

SEED_LIMIT = 2 ** 32  # seeds are 32-bit, as in A1111's and ComfyUI's UIs


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole number' if kind is int else 'number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not '{text}'")
    return value


def ranged(kind: type, what: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False):
    """A parser of ``kind`` numbers in [low, high] ((low, high] with ``low_open``), refusing others with
    ``must be WHAT``."""
    def parse(text: str):
        value = _number(text, kind)
        if value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value
    parse.__name__ = f"{kind.__name__} ({what})"  # argparse names the type in its own messages
    return parse


positive_int = ranged(int, "1 or more", low=1)
at_least_two = ranged(int, "2 or more", low=2)
count = ranged(int, "0 or more", low=0)
seed = ranged(int, f"a whole number from 0 to {SEED_LIMIT - 1}", low=0, high=SEED_LIMIT - 1)
port = ranged(int, "a port number from 1 to 65535", low=1, high=65535)
non_negative = ranged(float, "0 or more", low=0.0)
positive = ranged(float, "more than 0", low=0.0, low_open=True)
guidance = ranged(float, "0 or more (1 = no guidance)", low=0.0)
vsd_guidance = ranged(float, "1 (no guidance) or more", low=1.0)
learning_rate = ranged(float, "more than 0 and at most 1 (typical: 1e-5 to 1e-2)", low=0.0, high=1.0, low_open=True)
fraction = ranged(float, "between 0 and 1", low=0.0, high=1.0)
open_fraction = ranged(float, "more than 0 and at most 1", low=0.0, high=1.0, low_open=True)


# what --model takes, in every command's help (wadi_core.models.load_components reads them all)
MODEL_PATHS = ("a diffusers folder, a single-file SD1.x, SD2.x or SDXL .safetensors or a Hugging Face Hub id "
               "(owner/name)")


def hidden_alias(parser: argparse.ArgumentParser, flag: str, dest: str, **kwargs) -> None:
    """An old spelling of a flag, kept for one release: it sets ``dest`` and is not listed in --help."""
    parser.add_argument(flag, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def backbone_option(parser: argparse.ArgumentParser, whose: str = "--model") -> None:
    """``--unet FILE``: the whole backbone of ``whose`` replaced by a state dict (the authors' released models)."""
    parser.add_argument("--unet", dest="backbone", metavar="FILE",
                        help=f"a state dict of a whole UNet (or DiT transformer) that replaces the one of {whose}, "
                             "e.g. the authors' rotated_unet-sdv1-5.safetensors; checked strictly against it")


def dtype_option(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: the type the backbone draws in (wadi_core.devices.resolve_dtype)."""
    from wadi_core.devices import DTYPE_NAMES

    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPE_NAMES),
                        help="the UNet's (or DiT's) type while drawing (auto: fp16 on a CUDA GPU, fp32 elsewhere); "
                             "text encoders and VAE stay fp32")


def device_option(parser: argparse.ArgumentParser, what: str = "where to draw") -> None:
    """``--device``: where the images are drawn (checked before any work: wadi_core.devices)."""
    from wadi_core.devices import CHOICES  # torch is imported only when a device is resolved

    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help=f"{what}: {CHOICES} (auto: a CUDA GPU if torch sees one, else the CPU); the images of "
                             "a seed are the same up to float order")
