"""The ``train`` sub-command: one option per :class:`~densflow.training.TrainConfig` field,
typed and documented from the dataclass itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_train", "train_config_from_args"]


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` → ``(int, True)``; ``int`` → ``(int, False)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None)), True
    return tp, False


def _model_config(text: str) -> Any:
    """A DenseFlowConfig from inline JSON or a .json file."""
    from ..model import DenseFlowConfig

    try:
        raw = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
        return DenseFlowConfig.from_dict(raw)
    except (OSError, ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(
            f"not a DenseFlowConfig JSON object or file: {err}"
        ) from err


def add_train(sub: argparse._SubParsersAction) -> None:
    """One option per TrainConfig field, typed and documented from the dataclass itself."""
    from ..model import DenseFlowConfig
    from ..training import TRAIN_PRESETS, TrainConfig

    train = sub.add_parser(
        "train", help="train DenseFlow (or resume an interrupted run)",
        description="Train DenseFlow with the paper's protocol. --preset picks the settings of a "
        "named preset for --dataset (paper, official, smoke, quickstart); every other option sets "
        "one field of densflow.training.TrainConfig and overrides the preset. Without --preset "
        "the TrainConfig defaults apply: the quickstart settings, the small model on photos for "
        "4 epochs (minutes on a CPU). Running the same command again resumes from "
        "OUT_DIR/checkpoint.pt. One log line per --log-every steps, evaluation and checkpoint "
        "goes to stderr.",
    )  # fmt: skip
    train.add_argument(
        "--preset",
        choices=sorted(TRAIN_PRESETS),
        default=argparse.SUPPRESS,
        help="start from this preset's settings for --dataset",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, optional = _unwrap_optional(hints[f.name])
        opts: dict[str, Any] = {
            "help": f.metadata["help"], "default": argparse.SUPPRESS, "dest": f.name
        }  # fmt: skip
        if kind is bool:
            opts["action"] = argparse.BooleanOptionalAction
        elif kind is DenseFlowConfig:
            opts["type"], opts["metavar"] = _model_config, "JSON"
        else:
            opts["type"] = _optional(kind) if optional else kind
            if "metavar" in f.metadata:
                opts["metavar"] = f.metadata["metavar"]
            if "choices" in f.metadata:
                opts["choices"] = f.metadata["choices"]
        default = f.default if f.default is not dataclasses.MISSING else None
        opts["help"] += f" [TrainConfig default: {default}]"
        train.add_argument("--" + f.name.replace("_", "-"), **opts)
    train.set_defaults(run=_train, parser=train)


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~densflow.training.TrainConfig` that parsed ``train`` options describe: the
    preset's fields (if ``--preset``) overridden by every option given."""
    from ..training import TrainConfig, train_preset

    fields = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    if hasattr(args, "preset"):
        return train_preset(fields.pop("dataset", TrainConfig.dataset), args.preset, **fields)
    return TrainConfig(**fields)


def _train(args: argparse.Namespace) -> int:
    from ..training import train
    from ..utils.runtime import log_to_stderr

    # A bad setting (ValueError, found before any work) ends in main() as one line, exit 2.
    config = train_config_from_args(args)
    try:
        with log_to_stderr():
            result = train(config)
    except KeyboardInterrupt:
        print(
            f"interrupted; the same command resumes from {config.out_dir}/checkpoint.pt",
            file=sys.stderr,
        )
        return 130
    summary = {
        f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model"
    }
    summary.update(out_dir=str(result.out_dir), checkpoint=str(result.checkpoint))
    print(json.dumps(summary, indent=2))
    return 0
