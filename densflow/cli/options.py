"""Options that several sub-commands declare the same way: integer options refused in one line,
the seed of the random draws, and ``--trust-checkpoint``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_SEED", "add_seed", "add_trust_checkpoint", "option_int"]

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


def option_int(option: str, minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer option in ``[minimum, maximum]``, refused with one
    line."""
    from ..validate import check_int

    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        try:
            return check_int(option, value, minimum, maximum)
        except ValueError as err:  # argparse names the option already
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{option} ")) from None

    return parse


def add_seed(parser: argparse.ArgumentParser, draws: str) -> None:
    """``--seed`` (default 0) of the command's random ``draws``, any 64-bit seed."""
    parser.add_argument(
        "--seed",
        type=option_int("--seed", 0, MAX_SEED),
        default=0,
        help=f"seed of {draws} (default: 0)",
    )


def add_trust_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: full unpickling where ``weights_only`` loading fails."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling if weights_only loading fails (trusted files only)",
    )
