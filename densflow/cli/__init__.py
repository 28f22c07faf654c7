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
* ``download weights [--root DIR]`` — the authors' released models, converted into the cache that
  ``DenseFlow.from_pretrained("cifar10")`` reads (:mod:`densflow.weights`).

Expected failures (a dataset or checkpoint that is missing or malformed, a diverged training run)
print one ``error:`` message on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .ablate import add_ablate
from .download import add_download
from .models import add_eval, add_sample
from .train import add_train, train_config_from_args

__all__ = ["main", "build_parser", "train_config_from_args"]


def _convert(args: argparse.Namespace) -> int:
    from ..checkpoint import save_model
    from ..official import load_official

    model = load_official(
        args.official, args.args, image_size=args.image_size, trust_checkpoint=args.trust_checkpoint
    )
    if args.format == "pretrained":
        from ..pretrained import save_pretrained

        save_pretrained(model, args.out, source=str(args.official))
    else:
        save_model(model, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.official} → {args.out}: {n:,} parameters, "
        f"{model.config.image_size}×{model.config.image_size} images"
    )
    return 0


# ----------------------------------------------------------------------------- data


def _add_data(sub: argparse._SubParsersAction) -> None:
    from ..data import DATASETS, downloadable

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
    download.add_argument("name", choices=downloadable(), help="dataset name")
    download.add_argument("--root", required=True, help="folder to download into")
    download.set_defaults(run=_data_download)


def _data_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset

    print(check_dataset(args.name, args.data_dir))
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from ..data import download

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
    convert.add_argument("out", help="the densflow checkpoint (.pt) or model directory to write")
    convert.add_argument(
        "--format",
        choices=["checkpoint", "pretrained"],
        default="checkpoint",
        help="checkpoint: one .pt file (default); pretrained: a model directory (config.json + "
        "model.safetensors, no pickle) that DenseFlow.from_pretrained loads",
    )
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
    add_train(sub)
    add_eval(sub)
    add_sample(sub)
    _add_data(sub)
    add_download(sub)
    add_ablate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    from ..training import TrainingDivergedError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, DatasetError, TrainingDivergedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
