"""Downsampled ImageNet 32×32 and 64×64 as image-net.org distributes them.

On disk: ten training batch files ``train_data_batch_1`` .. ``train_data_batch_10`` (1,281,167
images in all) and one validation file ``val_data`` (50,000 images, the test split here). Each is
a Python 3 pickle (no extension, or ``.pkl``/``.pickle``) or an ``.npz`` holding ``data`` (uint8
``(N, 3·S·S)``, channel-major), ``labels`` (1..1000) and, for training batches, ``mean``; see
:mod:`densflow.data.arrays`. The release's zips unpack into folders (``Imagenet32_train/``,
``Imagenet64_train_part1/`` and ``_part2/``, ``Imagenet{S}_val/``, with ``_npz`` appended for the
npz version): every file is looked for in ``data_dir`` and in its sub-folders, one level down.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .arrays import ImageTensorDataset, batch_capacity, load_batches
from .errors import DatasetFormatError, empty_split, few, not_found

if TYPE_CHECKING:
    from .types import DatasetInfo, LoadOptions

__all__ = ["EXTENSIONS", "TRAIN_FILES", "VAL_FILE", "check", "layout", "load"]

TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
EXTENSIONS = ("", ".npz", ".pkl", ".pickle")


def layout(size: int) -> str:
    """The accepted layouts of the ``size``×``size`` release, in words, for error messages."""
    parts = f"Imagenet{size}_train.zip" if size == 32 else "Imagenet64_train_part1/2.zip"
    return (
        "pickles (no extension) or .npz, flat in data_dir or in its sub-folders, "
        f"e.g. those of the unzipped {parts} and Imagenet{size}_val.zip"
    )


def _files(info: DatasetInfo, root: Path, split: str) -> list[Path]:
    """Finds each batch file in ``root`` or one level down; split folders may hold parts of it."""
    if not root.is_dir():
        raise not_found(info, root, list(info.files), root)
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    stems = TRAIN_FILES if split == "train" else (VAL_FILE,)
    found, missing = [], []
    for stem in stems:
        hits = [d / (stem + e) for d in dirs for e in EXTENSIONS if (d / (stem + e)).is_file()]
        if len(hits) > 1:
            raise DatasetFormatError(
                f"{info.name}: {stem} found more than once ({few([str(h) for h in hits])}); point "
                "data_dir at the folder of one copy"
            )
        found += hits
        missing += [stem] if not hits else []
    if missing:
        raise not_found(info, root, missing, root)
    return found


def load(info: DatasetInfo, root: Path, split: str, options: LoadOptions) -> ImageTensorDataset:
    """One split, read into one preallocated array (the train split of ImageNet64 is 15.7 GB)."""
    return ImageTensorDataset(load_batches(info, _files(info, root, split)))


def check(info: DatasetInfo, root: Path, splits: Sequence[str]) -> tuple[dict[str, int], str]:
    """Batch files per split, without loading them.

    ``.npz`` files have their array headers read; pickles are checked to start and end like a
    pickle (which catches truncated downloads). A split whose files have no room for one image is
    refused.
    """
    files = {s: _files(info, root, s) for s in splits}
    for split, paths in files.items():
        # batch_capacity reads each npz header and checks each pickle's first and last opcode
        if sum(batch_capacity(info, p) for p in paths) == 0:
            raise empty_split(info, split, root)
    return {s: len(f) for s, f in files.items()}, f"batch files in {root}"
