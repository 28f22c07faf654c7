"""CIFAR-10 in its "python version" layout (``cifar-10-python.tar.gz``, extracted).

On disk: a folder ``cifar-10-batches-py/`` with five training batch files ``data_batch_1`` ..
``data_batch_5`` (10,000 images each) and ``test_batch`` (10,000), plus ``batches.meta`` (label
names, unused). Each batch file is a Python 2 protocol-2 pickle of a dict with byte-string keys
``data`` (uint8 ``(10000, 3072)``, channel-major 32×32), ``labels``, ``batch_label`` and
``filenames``; see :mod:`densflow.data.arrays`. ``data_dir`` may be the folder holding
``cifar-10-batches-py/`` or that folder itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .arrays import ImageTensorDataset, load_batches
from .errors import not_found

if TYPE_CHECKING:
    from .types import DatasetInfo, LoadOptions

__all__ = ["FILES", "FOLDER", "check", "download", "load"]

FOLDER = "cifar-10-batches-py"
FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_SPLIT_FILES = {"train": FILES[:5], "test": FILES[5:]}


def _folder(root: Path) -> Path:
    nested = root / FOLDER
    return nested if nested.is_dir() else root


def _files(info: DatasetInfo, root: Path, split: str) -> list[Path]:
    folder = _folder(root)
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:  # report every missing file, not only this split's: the copy is incomplete
        raise not_found(info, folder, missing, folder)
    return [folder / n for n in _SPLIT_FILES[split]]


def load(info: DatasetInfo, root: Path, split: str, options: LoadOptions) -> ImageTensorDataset:
    """One split, read whole into memory."""
    return ImageTensorDataset(load_batches(info, _files(info, root, split)))


def check(info: DatasetInfo, root: Path, splits: Sequence[str]) -> tuple[dict[str, int], str]:
    """Loads every split (CIFAR-10 is small): images per split, and where they are."""
    counts = {s: len(load_batches(info, _files(info, root, s))) for s in splits}
    return counts, f"images (3, 32, 32) in {_folder(root)}"


def download(root: Path) -> None:
    """Fetches and extracts ``cifar-10-python.tar.gz`` into ``root`` with torchvision (which checks
    its MD5)."""
    import torchvision.datasets as tvd

    tvd.CIFAR10(str(root), train=True, download=True)
