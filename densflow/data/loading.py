"""Loading and checking a dataset split, by its registry entry's format functions."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from ..utils.errors import InputError
from .errors import data_root, empty_split
from .registry import dataset_info
from .types import DatasetInfo, LoadOptions

__all__ = ["check_dataset", "load_dataset"]


def _split(info: DatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise InputError(f"{info.name} has splits {info.splits}, not {split!r}")


def _root(info: DatasetInfo, data_dir: str | os.PathLike[str] | None) -> Path | None:
    return data_root(info, data_dir) if info.files else None  # built-in data reads no folder


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    split: str,
    *,
    celeba_crop: str = "official",
    patch_stride: int = 16,
) -> Dataset[Tensor]:
    """Loads one split of a dataset; its items are ``(3, S, S)`` uint8 tensors.

    Arguments:
        name: a key of :data:`~densflow.data.DATASETS` (``"cifar10"``, ``"imagenet32"``,
            ``"imagenet64"``, ``"celeba"``, ``"photos"``).
        data_dir: the folder holding the files listed in ``DATASETS[name].files``; unused by
            ``"photos"``.
        split: one of ``DATASETS[name].splits``: ``"train"`` or ``"test"`` (ImageNet:
            ``val_data``); CelebA also ``"valid"``.
        celeba_crop: ``"official"`` (resize the whole image) or ``"center148"``; see
            :class:`~densflow.data.CelebA64`.
        patch_stride: the grid step of ``"photos"`` patches.

    Returns:
        An :class:`~densflow.data.ImageTensorDataset` held in memory (its ``images`` tensor can be
        indexed with a whole batch of indices) for every dataset but CelebA, a lazily decoding
        :class:`~densflow.data.CelebA64` for CelebA.

    Raises:
        DatasetError: the data are missing, malformed or empty (the message says what and where).
    """
    info = dataset_info(name)
    _split(info, split)
    options = LoadOptions(celeba_crop=celeba_crop, patch_stride=patch_stride)
    root = _root(info, data_dir)
    dataset = info.load(info, root, split, options)
    if len(dataset) == 0:
        raise empty_split(info, split, root)
    return dataset


def check_dataset(
    name: str, data_dir: str | os.PathLike[str] | None, split: str | None = None
) -> str:
    """Validates a dataset quickly and returns a one-line summary.

    Checks that every file is there and readable as the format's own ``check`` does it: CIFAR-10
    is loaded whole (it is small), ImageNet ``.npz`` files have their array headers read and
    pickles are checked to start and end like a pickle (which catches truncated downloads),
    CelebA's partition list is parsed and one image decoded.

    Arguments:
        name: the dataset.
        data_dir: as for :func:`load_dataset`.
        split: check only this split (e.g. ``"test"`` for an evaluation-only copy of ImageNet's
            ``val_data``); None checks them all.

    Raises:
        DatasetError: as :func:`load_dataset` would, but before any long load; also when a split
            holds no image.
    """
    info = dataset_info(name)
    splits = info.splits if split is None else (split,)
    for s in splits:
        _split(info, s)
    root = _root(info, data_dir)
    counts, what = info.check(info, root, splits)
    for s, n in counts.items():
        if n == 0:
            raise empty_split(info, s, root)
    return f"{name}: {' + '.join(f'{n} {s}' for s, n in counts.items())} {what}"
