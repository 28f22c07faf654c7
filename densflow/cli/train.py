"""The ``train`` sub-command: one option per :class:`~densflow.training.TrainConfig` field,
typed and documented from the dataclass itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from .options import add_config_options, given_fields

__all__ = ["add_train", "train_config_from_args"]


def _model_config(text: str) -> Any:
    """A DenseFlowConfig from inline JSON or a .json file."""
    from ..config import DenseFlowConfig
    from ..utils.reading import check_regular, parse_json

    try:
        inline = text.lstrip().startswith("{")
        what = "the JSON object" if inline else text
        raw = parse_json(
            text if inline else check_regular(text).read_text(), what, "a DenseFlowConfig"
        )
        if not isinstance(raw, dict):
            raise ValueError(f"{what} holds a {type(raw).__name__}, not a JSON object")
        return DenseFlowConfig.from_dict(raw)
    except (OSError, ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_train(sub: argparse._SubParsersAction) -> None:
    """One option per TrainConfig field, typed and documented from the dataclass itself."""
    from ..config import DenseFlowConfig
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
    fields = dataclasses.fields(TrainConfig)
    add_config_options(train, TrainConfig, fields, parse={DenseFlowConfig: _model_config})
    train.set_defaults(run=_train, parser=train)


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~densflow.training.TrainConfig` that parsed ``train`` options describe: the
    preset's fields (if ``--preset``) overridden by every option given."""
    from ..training import TrainConfig, train_preset

    fields = given_fields(TrainConfig, args)
    if hasattr(args, "preset"):
        return train_preset(fields.pop("dataset", TrainConfig.dataset), args.preset, **fields)
    return TrainConfig(**fields)


def _train(args: argparse.Namespace) -> int:
    from ..training import train
    from ..utils.distributed import Dist
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
    if Dist.from_env().is_main:  # under torchrun, one summary: rank 0's
        print(json.dumps(summary, indent=2))
    return 0
