"""The ``eval`` and ``sample`` sub-commands: a model (anything :func:`densflow.io.load` takes)
evaluated on a dataset split or sampled into a PNG grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..utils.errors import InputError
from .options import (
    add_cache_dir,
    add_config_options,
    add_deprecated,
    given_fields,
    option_range,
)

__all__ = ["Interrupted", "add_eval", "add_sample"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line that says what was kept."""


def _iw_samples(text: str) -> int | str:
    """``--iw-samples``: a number in EvalConfig's range, or ``paper``."""
    if text == "paper":
        return text
    return option_range("--iw-samples", "EvalConfig", "iw_samples")(text)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        metavar="MODEL",
        help="the model: a checkpoint (.pt) or run folder, a model directory, an official run "
        "folder (args.pickle + check/checkpoint.pt), a cached name (cifar10, imagenet32, "
        "imagenet64, celeba) or a Hugging Face Hub repo id",
    )
    add_deprecated(parser, "--official", "MODEL", "official", metavar="RUN_DIR")
    add_cache_dir(parser, "that holds the cached names")
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (cuda if available), 'cpu', 'cuda', ... (default: auto)",
    )


def _locate(args: argparse.Namespace) -> Any:
    """Where the model named on the command line is (:func:`densflow.io.locate`)."""
    from ..io.resolve import locate

    if (args.checkpoint is None) == (args.official is None):
        raise InputError("give the model once: MODEL (a path, a cached name or a Hub repo id)")
    args.checkpoint = args.checkpoint or args.official
    return locate(args.checkpoint, cache_dir=args.cache_dir)


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of ``command``, one per :class:`~densflow.evaluation.EvalConfig` field of it;
    its speed switches in a group of their own."""
    from ..evaluation import EvalConfig

    fields = EvalConfig.fields_of(command)
    add_config_options(
        parser, EvalConfig, [f for f in fields if not f.metadata.get("speed")],
        parse={"iw_samples": _iw_samples},
    )  # fmt: skip
    speed = parser.add_argument_group(
        "speed",
        "switches of densflow.performance (docs/performance.md): --channels-last, --compile and "
        "--cuda-graphs change results by rounding only (1e-5 relative), --amp bf16 a little more",
    )
    add_config_options(speed, EvalConfig, [f for f in fields if f.metadata.get("speed")])


def _settings(args: argparse.Namespace) -> Any:
    """The :class:`~densflow.evaluation.EvalConfig` of the options given (checked in one line
    before any work)."""
    from ..evaluation import EvalConfig

    return EvalConfig(**given_fields(EvalConfig, args))


def add_eval(sub: argparse._SubParsersAction) -> None:
    from ..data import CELEBA_CROPS, DATASETS

    ev = sub.add_parser(
        "eval", help="test-set bits/dim of a checkpoint",
        description="Bits/dim on a dataset split: the single-sample bound and, with --iw-samples, "
        "the importance-weighted bound the paper reports (k=1000 for CIFAR-10, k=200 otherwise: "
        "--iw-samples paper). Image i's draws depend on --seed and i alone, so the numbers do "
        "not depend on --batch-size, --chunk-size or the number of processes. Prints the JSON "
        "summary; --out also writes it with each image's bits/dim. Under torchrun every process "
        "evaluates a shard and rank 0 writes (docs/evaluation.md).",
    )  # fmt: skip
    _add_model_source(ev)
    ev.add_argument(
        "--dataset",
        default=None,
        choices=list(DATASETS),
        help="dataset name (default: the one the checkpoint was trained on, from its "
        "train config or the official args.pickle)",
    )
    ev.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    ev.add_argument(
        "--split",
        default="test",
        choices=["train", "valid", "test"],
        help="split to evaluate; valid exists for CelebA only (default: test)",
    )
    ev.add_argument(
        "--celeba-crop",
        default="official",
        choices=CELEBA_CROPS,
        help="CelebA crop: official resizes the whole image, center148 crops first "
        "(default: official)",
    )
    ev.add_argument(
        "--partial",
        default=None,
        help="progress file: an interrupted evaluation resumes from it (under torchrun, one "
        "per process: PARTIAL.rank<r>); only a progress file of this program is ever replaced "
        "or deleted (default: OUT.partial when --out is given)",
    )
    ev.add_argument(
        "--out", default=None, help="also write the JSON results, with each image's, to this file"
    )
    _add_settings(ev, "eval")
    ev.set_defaults(run=_eval, parser=ev)


def _load_for_speed(
    args: argparse.Namespace, source: Any, config: Any, dist: Any
) -> tuple[Any, str | None]:
    """The model of ``source`` on this process's device, prepared for ``channels_last`` and
    ``compile``, and the dataset it was trained on (when recorded)."""
    from ..performance import prepare_model

    device = dist.device(args.device, option="--device")
    model, trained_on = source.load(device)
    return prepare_model(model, config.channels_last, config.compile), trained_on


def _check_partial(partial: str, dist: Any, inputs: list[Any], trees: list[Any]) -> Path:
    """``--partial`` and this process's progress file (``PARTIAL.rank<r>`` under torchrun), each
    checked as an output that is read back: a regular file, none of the inputs."""
    from ..evaluation.partial import ProgressFiles
    from ..io.outputs import check_output

    path = check_output("--partial", partial, inputs, trees=trees, regular=True)
    own = ProgressFiles.path_of(path, dist)
    if own != path:
        check_output("--partial", own, inputs, trees=trees, regular=True)
    return path


def _eval(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluation import GroupStopped, evaluate
    from ..evaluation.partial import ProgressFiles
    from ..io.files import atomic_write_text
    from ..io.outputs import check_output
    from ..utils.distributed import Dist
    from ..utils.provenance import provenance
    from ..utils.runtime import collate_images, log_to_stderr

    config, dist = _settings(args), Dist.from_env()
    # Every output is checked against every input before any work, so that hours of evaluation
    # are never lost and no input is overwritten.
    source = _locate(args)
    trees = [args.data_dir]
    out = check_output("--out", args.out, source.files, trees=trees) if args.out else None
    partial = args.partial or (f"{args.out}.partial" if args.out else None)
    if partial is not None:
        partial = _check_partial(partial, dist, [*source.files, out], trees)

    model, trained_on = _load_for_speed(args, source, config, dist)
    dataset = args.dataset or trained_on
    if dataset is None:
        args.parser.error("--dataset is needed: the checkpoint does not record its dataset")
    config = config.for_dataset(dataset)
    images = load_dataset(dataset, args.data_dir, args.split, celeba_crop=args.celeba_crop)
    if len(images) == 0:
        raise InputError(f"{dataset} {args.split} has no images; check the dataset (data check)")
    shape = tuple(collate_images([images[0]]).shape[1:])
    if shape != tuple(model.image_shape):
        raise InputError(
            f"the model is for {model.image_shape} images, {dataset} {args.split} has {shape}; "
            "evaluate it on the dataset it was trained on (--dataset), or give a model of that "
            "image size"
        )
    try:
        with log_to_stderr():  # the group's progress lines, from rank 0
            result = evaluate(model, images, config, partial_path=partial, dist=dist)
    except (KeyboardInterrupt, GroupStopped) as err:
        why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
        kept = partial is not None and ProgressFiles.path_of(partial, dist).is_file()
        raise Interrupted(
            f"{why}; the partial file {ProgressFiles.path_of(partial, dist)} lets the same "
            "command resume"
            if kept
            else f"{why}; nothing was kept (give --out or --partial to make an evaluation "
            "resumable)"
        ) from None
    result.check_finite()  # non-finite bits/dim: one line, nothing written
    if not dist.is_main:
        return 0
    summary = {"dataset": dataset, "split": args.split, "model": args.checkpoint}
    print(json.dumps({**summary, **result.to_dict()}, indent=2, allow_nan=False))
    if out is not None:  # the file also says what produced it
        written = {**summary, **result.to_dict(per_image=True), "provenance": provenance()}
        text = json.dumps(written, indent=2)
        atomic_write_text(out, text + "\n")
    return 0


def add_sample(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "sample",
        help="write a PNG grid of samples",
        description="Draw samples from a model and save them as a PNG grid. Sample i's "
        "draws depend on --seed and i alone: under torchrun every process draws its share of "
        "the same grid, and rank 0 writes it.",
    )
    _add_model_source(sp)
    sp.add_argument("--out", required=True, help="the PNG file to write")
    _add_settings(sp, "sample")
    sp.set_defaults(run=_sample)


def _sample(args: argparse.Namespace) -> int:
    from ..evaluation import GroupStopped, save_sample_grid
    from ..io.outputs import check_output
    from ..utils.distributed import Dist

    config, dist = _settings(args), Dist.from_env()
    source = _locate(args)
    out = check_output("--out", args.out, source.files)
    model, _ = _load_for_speed(args, source, config, dist)
    try:
        save_sample_grid(model, out, config, dist=dist)
    except (KeyboardInterrupt, GroupStopped) as err:
        why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
        raise Interrupted(f"{why}; {out} was not written") from None
    if dist.is_main:
        print(f"wrote {config.n_samples} samples to {args.out}")
    return 0
