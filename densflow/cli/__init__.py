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
  ``DenseFlow.from_pretrained("cifar10")`` reads (:mod:`densflow.io.weights`).

Exit status and messages:

* 0: done.
* 2: an error the user can fix (a bad option, a missing or malformed dataset or checkpoint, an
  output that cannot be written, a full disk, a diverged run, non-finite results): one line
  ``error: ...`` on stderr saying what is wrong, what was expected and how to fix it. The
  package's own checks raise ``ValueError`` (or ``TypeError``) naming the argument, so both count
  as such errors, as do ``OSError`` (disk full, read-only, a folder where a file goes) and GPU
  out-of-memory.
* 130: interrupted (Ctrl-C); the line says whether a progress file lets the same command resume.
* 1: anything else is a bug in densflow: one line with the exception, and a pointer to
  ``--debug``.

``--debug`` (or the environment variable ``DENSFLOW_DEBUG=1``) lets every exception through with
its full traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from .ablate import add_ablate
from .download import add_download
from .models import Interrupted, add_eval, add_sample, official_files
from .options import add_trust_checkpoint, option_int
from .train import add_train, train_config_from_args

__all__ = ["main", "build_parser", "train_config_from_args"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other error of the command
    line (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def _convert(args: argparse.Namespace) -> int:
    from ..io.checkpoint import save_model
    from ..io.official import load_official
    from ..utils.validate import check_output_path

    inputs = [args.official, args.args, *official_files(args.official)]
    check_output_path("OUT", args.out, inputs, folder=args.format == "pretrained")
    model = load_official(
        args.official, args.args, image_size=args.image_size, trust_checkpoint=args.trust_checkpoint
    )
    if args.format == "pretrained":
        from ..io.pretrained import save_pretrained

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
    parser = _Parser(
        prog="python -m densflow",
        description="DenseFlow (Grcić et al., NeurIPS 2021): train, evaluate and sample; convert "
        "official checkpoints; check and download datasets.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also: DENSFLOW_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser(
        "convert",
        help="convert an official DenseFlow checkpoint into a densflow checkpoint",
        description="Read an official run folder (args.pickle + check/checkpoint.pt) or checkpoint "
        "file, check every key and shape, and write a densflow checkpoint that "
        "densflow.io.checkpoint.load_model (and every other sub-command) reads.",
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
        type=option_int("--image-size"),
        default=None,
        help="image size, when there is no args.pickle (default 32)",
    )
    add_trust_checkpoint(convert)
    convert.set_defaults(run=_convert)
    add_train(sub)
    add_eval(sub)
    add_sample(sub)
    _add_data(sub)
    add_download(sub)
    add_ablate(sub)
    return parser


def _message(err: BaseException) -> tuple[int, str]:
    """The exit status and the one line that :func:`main` prints for ``err``."""
    import torch

    from ..data import DatasetError, MissingDependencyError
    from ..io.checkpoint import CheckpointError
    from ..training import TrainingDivergedError

    if isinstance(err, Interrupted):
        return 130, str(err)
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(
        err, (CheckpointError, DatasetError, MissingDependencyError, TrainingDivergedError)
    ):
        return 2, f"error: {err}"
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return 2, (
            "error: out of GPU memory; use a smaller --batch-size (or --chunk-size), or "
            "--device cpu"
        )
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        fix = {
            errno.ENOSPC: "free some space and run the same command again",
            errno.EACCES: "choose a path you may write to",
            errno.EROFS: "choose a path on a writable file system",
            errno.EISDIR: "give a file path, not a folder",
            errno.ENOTDIR: "a part of the path is a file; give a folder path",
            errno.ENOENT: "check the path",
        }.get(err.errno, "check the path, its permissions and the free disk space")
        return 2, f"error: {where}{err.strerror or err}; {fix}"
    if isinstance(err, (ValueError, TypeError)):  # the package's own checks of user values
        return 2, f"error: {err}"
    return 1, (
        f"error: unexpected {err.__class__.__name__}: {err}; this is a bug in densflow, rerun "
        "with --debug for the traceback"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an error ends as one ``error:`` line and a status (see the module's
    docstring), or, with ``--debug`` or ``DENSFLOW_DEBUG=1``, as the exception itself."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DENSFLOW_DEBUG", "") not in ("", "0")
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as err:
        if debug:
            raise
        status, line = _message(err)
        print(line, file=sys.stderr)
        return status
