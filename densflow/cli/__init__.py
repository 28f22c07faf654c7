"""The ``densflow`` command line (also ``python -m densflow``).

Sub-commands:

* ``convert OFFICIAL_DIR OUT.pt`` — turn an official DenseFlow run folder (``args.pickle`` and
  ``check/checkpoint.pt``) or checkpoint file into a densflow checkpoint or model directory.
* ``train [--preset P] [--FIELD VALUE ...]`` — train, or resume the run in ``--out-dir``; one
  option per :class:`~densflow.training.TrainConfig` field, generated from the dataclass.
  Progress goes to stderr as ``logging`` lines (and a bar on a terminal).
* ``eval MODEL`` — test-set bits/dim (single-sample and importance-weighted).
* ``sample MODEL --out grid.png`` — a PNG grid of samples.
* ``data check NAME --data-dir D`` and ``data download NAME --data-dir D``.
* ``download weights [--cache-dir DIR]`` — the authors' released models, converted into the cache
  that ``DenseFlow.from_pretrained("cifar10")`` reads (:mod:`densflow.io.weights`).

``MODEL`` is anything :func:`densflow.io.load` takes: a checkpoint, a run folder, a model
directory, an official run folder, a cached name or a Hugging Face Hub repo id.

Exit status and messages, by cause:

* 0: done.
* 2: a mistake in what the user gave (:class:`~densflow.utils.errors.InputError`: a bad option,
  a missing or malformed dataset or checkpoint, an output that is an input), a missing optional
  package, a diverged run, or the environment refusing (a full disk, no permission, a read-only
  file system, a path that does not exist, not enough memory for the requested size): one line
  ``error: ...`` on stderr with the path and the cause, and how to fix it.
* 130: interrupted (Ctrl-C, or SIGTERM as ``torchrun`` and batch schedulers send it); the line
  says whether a progress file lets the same command resume.
* 1: anything else (a ``ValueError`` or ``TypeError`` included) is a bug in densflow: one line
  with the exception, and a pointer to ``--debug``.

``--debug`` (or the environment variable ``DENSFLOW_DEBUG=1``) lets every exception through with
its full traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..utils.errors import InputError
from ..utils.signals import sigterm_as_interrupt
from .ablate import add_ablate
from .download import add_download
from .models import Interrupted, add_eval, add_sample
from .options import add_deprecated, add_trust_checkpoint, option_int
from .train import add_train, train_config_from_args

__all__ = ["build_parser", "invoked_name", "main", "train_config_from_args"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other error of the command
    line (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def _convert(args: argparse.Namespace) -> int:
    from ..io.checkpoint import save_model
    from ..io.official import load_official, locate_official
    from ..io.outputs import check_output, check_output_folder
    from ..io.pretrained import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

    source = Path(args.official)
    inputs = [source, args.args, *(locate_official(source) if source.exists() else ())]
    if args.format == "pretrained":
        check_output_folder("OUT", args.out, [CONFIG_NAME, WEIGHTS_NAME], inputs)
    else:
        check_output("OUT", args.out, inputs)
    model = load_official(
        args.official, args.args, image_size=args.image_size, trust_checkpoint=args.trust_checkpoint
    )
    if args.format == "pretrained":
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
    folder = download.add_mutually_exclusive_group(required=True)
    folder.add_argument("--data-dir", help="folder to download into")
    add_deprecated(folder, "--root", "--data-dir", "data_dir")
    download.set_defaults(run=_data_download)


def _data_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset

    print(check_dataset(args.name, args.data_dir))
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from ..data import download

    print(f"data_dir: {download(args.name, args.data_dir)}")
    return 0


def invoked_name() -> str:
    """How the user ran the command line: ``densflow`` (the installed script) or
    ``python -m densflow``."""
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return "densflow" if script == "densflow" else "python -m densflow"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command; ``prog`` (default :func:`invoked_name`) heads its usage
    lines and messages."""
    parser = _Parser(
        prog=prog or invoked_name(),
        description="DenseFlow (Grcić et al., NeurIPS 2021): train, evaluate and sample; convert "
        "official checkpoints; check and download datasets.",
    )
    parser.add_argument(
        "--debug",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="show the full traceback of an error (also: DENSFLOW_DEBUG=1)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser(
        "convert",
        help="convert an official DenseFlow checkpoint into a densflow checkpoint",
        description="Read an official run folder (args.pickle + check/checkpoint.pt) or checkpoint "
        "file, check every key and shape, and write a densflow checkpoint (or model directory) "
        "that every other sub-command and densflow.io.load read.",
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


_ENVIRONMENT = {
    errno.ENOSPC: "free some space and run the same command again",
    errno.EDQUOT: "free space within your disk quota and run the same command again",
    errno.EACCES: "choose a path you may write to, or fix its permissions",
    errno.EPERM: "choose a path you may write to, or fix its permissions",
    errno.EROFS: "choose a path on a writable file system",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENOTDIR: "a part of the path is a file; give a folder path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EFBIG: "write to a file system that takes files this large",
    errno.ENOMEM: "use a smaller size (--batch-size, --chunk-size, --n) or a larger machine",
}
"""System errors that are the environment's, not densflow's, and what to do about each."""


def _out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "DefaultCPUAllocator" in text or "can't allocate memory" in text
    )


def _message(err: BaseException) -> tuple[int, str]:
    """The exit status and the one line that :func:`main` prints for ``err``: 2 for a mistake
    in what the user gave or a refusal of the environment, 1 for a bug."""
    from ..data import MissingDependencyError
    from ..training import TrainingDivergedError
    from ..utils.errors import first_line

    if isinstance(err, Interrupted):
        return 130, str(err)
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(err, (InputError, MissingDependencyError, TrainingDivergedError)):
        return 2, f"error: {err}"
    if _out_of_memory(err):
        return 2, (
            f"error: out of memory for the requested size ({first_line(err)}); use a smaller "
            "--batch-size, --chunk-size or --n, --device cpu, or a machine with more memory"
        )
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT:
        if err.errno != errno.ENOENT or err.filename:  # a user's path, not an internal one
            where = f"{err.filename}: " if err.filename else ""
            reason = err.strerror or os.strerror(err.errno)
            return 2, f"error: {where}{reason}; {_ENVIRONMENT[err.errno]}"
    return 1, (
        f"error: unexpected {first_line(err)}; this is a bug in densflow, rerun with --debug for "
        "the traceback"
    )


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run one command; an error ends as one ``error:`` line and a status (see the module's
    docstring), or, with ``--debug`` or ``DENSFLOW_DEBUG=1``, as the exception itself."""
    args = build_parser(prog).parse_args(argv)
    debug = args.debug or os.environ.get("DENSFLOW_DEBUG", "") not in ("", "0")
    # SIGTERM (torchrun stopping a job's other processes, a scheduler ending a job) is Ctrl-C,
    # up to and including the line that says what was kept.
    with sigterm_as_interrupt():
        try:
            return args.run(args)
        except (Exception, KeyboardInterrupt) as err:
            if debug:
                raise
            status, line = _message(err)
            print(line, file=sys.stderr)
            return status
