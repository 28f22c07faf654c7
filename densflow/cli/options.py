"""Options that several sub-commands declare the same way: numbers refused in one line,
``--trust-checkpoint``, ``--cache-dir``, old spellings kept with a deprecation warning, and one
option per field of a settings dataclass (:func:`add_config_options`: ``train``'s from
:class:`~densflow.training.TrainConfig`, ``eval``'s and ``sample``'s from
:class:`~densflow.evaluation.EvalConfig`). Every switch has the ``--X/--no-X`` form of
``argparse.BooleanOptionalAction``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "add_cache_dir",
    "add_config_options",
    "add_deprecated",
    "add_trust_checkpoint",
    "given_fields",
    "option_float",
    "option_int",
    "option_range",
]


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


def option_float(
    option: str, minimum: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number option in ``[minimum, maximum]``, refused with one
    line."""
    from ..utils.validate import check_float

    return _option_type(
        option, float, lambda value: check_float(option, value, minimum=minimum, maximum=maximum)
    )


def option_range(option: str, owner: str, name: str) -> Callable[[str], Any]:
    """An argparse ``type``: a number in the range of ``owner``'s field ``name``
    (:data:`densflow.utils.ranges.RANGES`), refused with one line."""
    from ..utils.ranges import RANGES

    rng = RANGES[owner][name]
    if rng.real:
        return option_float(option, rng.low, rng.high)
    return option_int(option, int(rng.low), int(rng.high))


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, and ``none`` for None (an optional field's "not set")."""

    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return parse_or_none


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    fields: Iterable[dataclasses.Field],
    parse: dict[Any, Callable[[str], Any]] | None = None,
) -> None:
    """One option per field of the dataclass ``cls``, ``--field-name`` (or the field's
    ``metadata["flags"]``, plus its ``aliases``), typed from its annotation and documented by its
    ``metadata["help"]`` and default. A bool is a ``--x/--no-x`` pair; a number of
    :class:`~densflow.evaluation.EvalConfig` is checked against its range in
    :data:`densflow.utils.ranges.RANGES` (naming the option); an optional field also takes
    ``none``. ``parse`` gives the parser of a field (by name) or of a
    type. Options not given stay unset on the namespace (:func:`given_fields`)."""
    from ..utils.ranges import RANGES
    from ..utils.validate import field_kind

    parse = parse or {}
    # Numbers are checked when parsed where the config's own check would name the field, not
    # the option (EvalConfig); TrainConfig names its options itself.
    checked = RANGES[cls.__name__] if cls.__name__ == "EvalConfig" else {}
    for f in fields:
        kind, optional = field_kind(cls, f.name)
        meta = f.metadata
        flags = [*meta.get("flags", ["--" + f.name.replace("_", "-")]), *meta.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else None
        opts: dict[str, Any] = {
            "help": f"{meta['help']} [{cls.__name__} default: {default}]",
            "default": argparse.SUPPRESS,
            "dest": f.name,
        }
        if kind is bool:
            opts["action"] = argparse.BooleanOptionalAction
        else:
            convert = parse.get(f.name) or parse.get(kind)
            if convert is None and f.name in checked:
                convert = option_range(flags[0], cls.__name__, f.name)
            convert = convert or kind
            opts["type"] = _or_none(convert) if optional else convert
            for key in ("metavar", "choices"):
                if key in meta:
                    opts[key] = meta[key]
        parser.add_argument(*flags, **opts)


def given_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that options of :func:`add_config_options` set in ``args``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


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
