"""The ``python -m densflow`` command line.

Sub-commands:

* ``convert OFFICIAL_DIR OUT.pt`` — turn an official DenseFlow run folder (``args.pickle`` and
  ``check/checkpoint.pt``) or checkpoint file into a densflow checkpoint.
* ``train [--preset P] [--FIELD VALUE ...]`` — train or resume; one option per
  :class:`~densflow.training.TrainConfig` field, generated from the dataclass. Progress goes to
  stderr as ``logging`` lines (and a bar on a terminal).
* ``eval CHECKPOINT | --official RUN_DIR`` — test-set bits/dim (single-sample and
  importance-weighted).
* ``sample CHECKPOINT | --official RUN_DIR --out grid.png`` — a PNG grid of samples.
* ``data check NAME --data-dir D`` and ``data download NAME --root R``.

Expected failures (a dataset or checkpoint that is missing or malformed, a diverged training run)
print one ``error:`` message on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "train_config_from_args"]


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import save_model
    from .official import load_official

    model = load_official(
        args.official, args.args, image_size=args.image_size, trust_checkpoint=args.trust_checkpoint
    )
    save_model(model, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.official} → {args.out}: {n:,} parameters, "
        f"{model.config.image_size}×{model.config.image_size} images"
    )
    return 0


# ----------------------------------------------------------------------------- train


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
    from .model import DenseFlowConfig

    try:
        raw = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
        return DenseFlowConfig.from_dict(raw)
    except (OSError, ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(
            f"not a DenseFlowConfig JSON object or file: {err}"
        ) from err


def _add_train(sub: argparse._SubParsersAction) -> None:
    """One option per TrainConfig field, typed and documented from the dataclass itself."""
    from .model import DenseFlowConfig
    from .training import TRAIN_PRESETS, TrainConfig

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
        opts: dict[str, Any] = {"help": f.metadata["help"], "default": argparse.SUPPRESS}
        if kind is bool:
            opts["action"] = argparse.BooleanOptionalAction
        elif kind is DenseFlowConfig:
            opts["type"], opts["metavar"] = _model_config, "JSON"
        else:
            opts["type"] = _optional(kind) if optional else kind
            if "choices" in f.metadata:
                opts["choices"] = f.metadata["choices"]
        default = f.default if f.default is not dataclasses.MISSING else None
        opts["help"] += f" [TrainConfig default: {default}]"
        train.add_argument("--" + f.name.replace("_", "-"), **opts)
    train.set_defaults(run=_train, parser=train)


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~densflow.training.TrainConfig` that parsed ``train`` options describe: the
    preset's fields (if ``--preset``) overridden by every option given."""
    from .training import TrainConfig, train_preset

    fields = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    if hasattr(args, "preset"):
        return train_preset(fields.pop("dataset", TrainConfig.dataset), args.preset, **fields)
    return TrainConfig(**fields)


def _train(args: argparse.Namespace) -> int:
    from .runtime import log_to_stderr
    from .training import train

    try:
        config = train_config_from_args(args)
    except ValueError as err:
        args.parser.error(str(err))
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


# ----------------------------------------------------------------------------- eval and sample


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "checkpoint",
        nargs="?",
        help="a densflow checkpoint (.pt): from training, or converted with 'convert'",
    )
    source.add_argument(
        "--official",
        metavar="RUN_DIR",
        help="an official DenseFlow run folder (args.pickle + check/checkpoint.pt)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (cuda if available), 'cpu', 'cuda', ... (default: auto)",
    )


def _load(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The model to evaluate or sample, and the dataset it was trained on (when recorded)."""
    from .checkpoint import load_any_checkpoint
    from .runtime import resolve_device

    return load_any_checkpoint(args.official or args.checkpoint, resolve_device(args.device))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .data import CELEBA_CROPS, DATASETS

    ev = sub.add_parser(
        "eval", help="test-set bits/dim of a checkpoint",
        description="Bits/dim on a dataset split: the single-sample bound and, with --iw-samples, "
        "the importance-weighted bound the paper reports (k=1000 for CIFAR-10 in chunks of 50, "
        "k=200 otherwise: --iw-samples paper). Prints JSON; --out also writes it to a file.",
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
    ev.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    ev.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per forward pass; the "
        "importance-weighted bound runs batch-size x chunk-size (default: 64)",
    )
    ev.add_argument(
        "--iw-samples",
        default=None,
        help="k of the importance-weighted bound, or "
        "'paper' for the paper's k of the dataset (default: single-sample only)",
    )
    ev.add_argument(
        "--chunk-size",
        type=int,
        default=50,
        help="importance samples per forward pass (default: 50)",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the noise draws (default: 0)")
    ev.add_argument(
        "--partial",
        default=None,
        help="progress file: an interrupted evaluation "
        "resumes from it (default: OUT.partial when --out is given)",
    )
    ev.add_argument("--out", default=None, help="also write the JSON results to this file")
    ev.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    ev.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only on a terminal)",
    )
    _add_speed_switches(
        ev,
        amp_help="bf16: the coupling networks in bfloat16, log-dets and "
        "bits/dim in float32; the paper's numbers are float32 (default: none)",
        compile_help="worth it for importance-weighted runs of the whole test set",
    )
    ev.set_defaults(run=_eval, parser=ev)


def _add_speed_switches(parser: argparse.ArgumentParser, amp_help: str, compile_help: str) -> None:
    from .performance import AMP_MODES

    speed = parser.add_argument_group(
        "speed",
        "switches of densflow.performance (docs/performance.md): --channels-last and "
        "--compile change results by rounding only (1e-5 relative), --amp bf16 a little more",
    )
    speed.add_argument("--amp", default="none", choices=AMP_MODES, help=amp_help)
    speed.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format for the convolutions"
    )
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the flow: minutes of compilation, then faster passes; " + compile_help,
    )


def _load_for_speed(args: argparse.Namespace) -> tuple[Any, str | None]:
    """:func:`_load`, then the model prepared for ``--channels-last`` and ``--compile``."""
    from .performance import prepare_model

    model, trained_on = _load(args)
    return prepare_model(model, args.channels_last, args.compile), trained_on


def _eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluate import PAPER_IW_SAMPLES, evaluate
    from .runtime import first_images

    model, trained_on = _load_for_speed(args)
    dataset = args.dataset or trained_on
    if dataset is None:
        args.parser.error("--dataset is needed: the checkpoint does not record its dataset")
    k = args.iw_samples
    if k == "paper":
        if dataset not in PAPER_IW_SAMPLES:
            args.parser.error(f"the paper reports no importance-weighted bound for {dataset}")
        k = PAPER_IW_SAMPLES[dataset]
    k = int(k) if k is not None else None
    images = load_dataset(dataset, args.data_dir, args.split, celeba_crop=args.celeba_crop)
    images = first_images(images, args.limit)
    partial = args.partial or (f"{args.out}.partial" if args.out else None)
    result = evaluate(
        model,
        images,
        batch_size=args.batch_size,
        iw_samples=k,
        chunk_size=args.chunk_size,
        seed=args.seed,
        progress=args.progress,
        partial_path=partial,
        num_workers=args.num_workers,
        amp=args.amp,
    )
    summary = {
        "dataset": dataset,
        "split": args.split,
        "model": args.checkpoint or args.official,
        **result.to_dict(),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "sample",
        help="write a PNG grid of samples",
        description="Draw samples from a checkpoint and save them as a PNG grid.",
    )
    _add_model_source(sp)
    sp.add_argument("--out", required=True, help="the PNG file to write")
    sp.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    sp.add_argument("--nrow", type=int, default=8, help="images per grid row (default: 8)")
    sp.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of the prior's standard deviation (default: 1.0)",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    _add_speed_switches(
        sp,
        amp_help="bf16: the coupling networks in bfloat16; the same draws, "
        "so pixels differ slightly from the float32 samples (default: none)",
        compile_help="worth it only for a large --n",
    )
    sp.set_defaults(run=_sample)


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .evaluate import save_sample_grid

    model, _ = _load_for_speed(args)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)
    save_sample_grid(
        model,
        args.out,
        n=args.n,
        temperature=args.temperature,
        generator=generator,
        nrow=args.nrow,
        amp=args.amp,
    )
    print(f"wrote {args.n} samples to {args.out}")
    return 0


# ----------------------------------------------------------------------------- data


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .data import DATASETS

    dp = sub.add_parser(
        "data",
        help="check or download a dataset",
        description="Check that a dataset is complete, or download it.",
    )
    actions = dp.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check",
        help="validate a dataset folder and summarise it",
        description="Validate every split of a dataset quickly (files "
        "present, formats readable) and print a one-line summary.",
    )
    check.add_argument("name", choices=list(DATASETS), help="dataset name")
    check.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    check.set_defaults(run=_data_check)
    download = actions.add_parser(
        "download",
        help="download CIFAR-10 or CelebA",
        description="Download a dataset with torchvision (CIFAR-10, "
        "CelebA); ImageNet needs a manual download from image-net.org.",
    )
    download.add_argument("name", choices=list(DATASETS), help="dataset name")
    download.add_argument("--root", required=True, help="folder to download into")
    download.set_defaults(run=_data_download)


def _data_check(args: argparse.Namespace) -> int:
    from .data import check_dataset

    print(check_dataset(args.name, args.data_dir))
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from .data import download

    print(f"data_dir: {download(args.name, args.root)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m densflow",
        description="DenseFlow (Grcić et al., NeurIPS 2021): train, evaluate and sample; convert "
        "official checkpoints; check and download datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser(
        "convert",
        help="convert an official DenseFlow checkpoint into a densflow checkpoint",
        description="Read an official run folder (args.pickle + check/checkpoint.pt) or checkpoint "
        "file, check every key and shape, and write a densflow checkpoint that "
        "densflow.checkpoint.load_model (and every other sub-command) reads.",
    )
    convert.add_argument("official", help="official run folder, or its check/checkpoint.pt")
    convert.add_argument("out", help="where to write the densflow checkpoint (.pt)")
    convert.add_argument(
        "--args",
        default=None,
        help="the run's args.pickle (default: found beside the check/ folder)",
    )
    convert.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="image size, when there is no args.pickle (default 32)",
    )
    convert.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling if weights_only loading fails (trusted files only)",
    )
    convert.set_defaults(run=_convert)
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .training import TrainingDivergedError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, DatasetError, TrainingDivergedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
