"""``densflow download weights``: the authors' released models, into the cache."""

from __future__ import annotations

import argparse

from .options import add_cache_dir, add_deprecated, add_trust_checkpoint

__all__ = ["add_download"]


def add_download(sub: argparse._SubParsersAction) -> None:
    dp = sub.add_parser(
        "download",
        help="download the authors' released weights",
        description="Fetch the authors' run folders from Google Drive (needs the 'download' extra: "
        "gdown), verify the archive's sha256, unpack it, and convert every run folder into a model "
        "directory named after its dataset in the cache, where DenseFlow.from_pretrained(NAME) "
        "finds it. Interrupted, the same command resumes.",
    )
    what = dp.add_subparsers(dest="what", required=True)
    weights = what.add_parser(
        "weights",
        help="the authors' DenseFlow-74-10 models (cifar10, imagenet32, imagenet64, celeba)",
        description="Download, verify, unpack and convert the authors' weights into the cache.",
    )
    add_cache_dir(weights, "to fill")
    add_deprecated(weights, "--root", "--cache-dir", "cache_dir")
    weights.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="PATH",
        help="an archive (zip or tar) or folder you downloaded yourself: no network",
    )
    add_trust_checkpoint(weights)
    weights.set_defaults(run=_download_weights)


def _download_weights(args: argparse.Namespace) -> int:
    from ..io.weights import download_weights

    found = download_weights(
        args.cache_dir, source=args.source, trust_checkpoint=args.trust_checkpoint
    )
    print(f"load with DenseFlow.from_pretrained(NAME), NAME in {sorted(found)}")
    return 0
