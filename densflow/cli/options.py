"""Options that several sub-commands declare the same way: numbers refused in one line, the seed
of the random draws, ``--trust-checkpoint``, ``--cache-dir``, and old spellings kept with a
deprecation warning. Every switch has the ``--X/--no-X`` form of
``argparse.BooleanOptionalAction``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_SEED",
    "add_cache_dir",
    "add_deprecated",
    "add_seed",
    "add_trust_checkpoint",
    "option_float",
    "option_int",
]

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


def _option_type(option: str, convert: type, check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``check(convert(text))`` (``check(text)`` when ``text`` does not
    convert, so the message shows what was typed), a refusal in one line."""

    def parse(text: str) -> Any:
        try:
            value: Any = convert(text)
        except ValueError:
            value = text
        try:
            return check(value)
        except ValueError as err:  # argparse names the option already
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{option} ")) from None

    return parse


def option_int(option: str, minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer option in ``[minimum, maximum]``, refused with one
    line."""
    from ..utils.validate import check_int

    return _option_type(option, int, lambda value: check_int(option, value, minimum, maximum))


def option_float(option: str, minimum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number option ``>= minimum``, refused with one line."""
    from ..utils.validate import check_float

    return _option_type(option, float, lambda value: check_float(option, value, minimum=minimum))


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
        action=argparse.BooleanOptionalAction,
        default=False,
        help="allow full unpickling if weights_only loading fails (trusted files only)",
    )


class _Deprecated(argparse.Action):
    """An old spelling of an option: it means the same, and says once on stderr what replaces it."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(parser: Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """``old``: an old spelling of the option ``new`` (same ``dest``), hidden from the help and
    taken with a one-line deprecation warning."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS,
                        **kwargs)  # fmt: skip


def add_cache_dir(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cache-dir``: the densflow cache, ``what`` it holds for the command."""
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=f"the densflow cache {what} (default: $DENSFLOW_CACHE, else ~/.cache/densflow)",
    )
