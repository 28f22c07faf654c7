"""The ``python -m densflow`` command line.

Sub-commands:

* ``convert OFFICIAL_DIR OUT.pt`` — turn an official DenseFlow run folder (``args.pickle`` and
  ``check/checkpoint.pt``) or checkpoint file into a densflow checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import save_model
    from .official import load_official

    model = load_official(args.official, args.args, image_size=args.image_size,
                          trust_checkpoint=args.trust_checkpoint)
    save_model(model, args.out, source=str(args.official))
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.official} → {args.out}: {n:,} parameters, "
          f"{model.config.image_size}×{model.config.image_size} images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m densflow",
        description="DenseFlow (Grcić et al., NeurIPS 2021): convert official checkpoints, and more.",
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
    convert.add_argument("--args", default=None,
                         help="the run's args.pickle (default: found beside the check/ folder)")
    convert.add_argument("--image-size", type=int, default=None,
                         help="image size, when there is no args.pickle (default 32)")
    convert.add_argument("--trust-checkpoint", action="store_true",
                         help="allow full unpickling if weights_only loading fails (trusted files only)")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
