"""Patches of seven real photographs that ship inside the package: real images, no download.

The photographs are ``densflow/data/assets/photos/*.png`` (1.6 MB in all): scikit-image's sample
photographs, each resized once (Lanczos) to a shorter side of 320 px and stored losslessly, so the
patches are the same, pixel for pixel, as those cut from scikit-image's own copies, and the base
install needs neither scikit-image nor SciPy. ``assets/README.md`` gives each photograph's source
and licence. See :class:`PhotoPatches` for how the 32×32 patches and the train/test regions are cut.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..utils.errors import InputError
from .arrays import ImageTensorDataset

if TYPE_CHECKING:
    from pathlib import Path

    from .types import DatasetInfo, LoadOptions

__all__ = ["PhotoPatches", "check", "load"]

_PHOTOS = tuple(
    "astronaut chelsea coffee rocket hubble_deep_field immunohistochemistry motorcycle".split()
)
_PHOTO_SIDE = 320  # shorter side: 32 px patches then show object parts, not texture
_PHOTO_GAP = 32  # columns between the train and the test region of each photo
_PATCH = 32


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The photographs, ``(H, W, 3)`` uint8 with a shorter side of 320 px, read-only."""
    from PIL import Image

    folder = resources.files(__package__) / "assets" / "photos"
    out = []
    for name in _PHOTOS:
        with (folder / f"{name}.png").open("rb") as f, Image.open(f) as img:
            arr = np.asarray(img.convert("RGB"))
        arr.setflags(write=False)  # cached and shared
        out.append(arr)
    return tuple(out)


def _photo_region(width: int, split: str) -> tuple[int, int]:
    """Columns ``[start, stop)`` of a photo that a split may use: train the left 80 % less a gap
    of 32 columns, test the right 20 %."""
    cut = round(0.8 * width)
    return (0, cut - _PHOTO_GAP) if split == "train" else (cut, width)


class PhotoPatches(ImageTensorDataset):
    """32×32 patches of seven real photographs shipped with densflow; needs no download.

    Photos (scikit-image's samples): astronaut, chelsea, coffee, rocket, hubble_deep_field,
    immunohistochemistry and the left view of stereo_motorcycle, at a shorter side of 320 px.
    Train patches come from the left 80 % of each photo's columns less 32, test patches from the
    right 20 %, so no pixel of a test patch lies within 32 px of a train patch. Patches lie on a
    grid of step ``patch_stride``; nothing is random. With the default stride 16 there are 2356
    train and 532 test patches.

    Attributes:
        images: ``(N, 3, 32, 32)`` uint8.
        origins: ``(N, 3)`` int64 rows of (photo index, top, left) of each patch.
        photos: the photo names, indexed by ``origins[:, 0]``.
        regions: the columns ``[start, stop)`` of each photo that this split used.
    """

    def __init__(self, split: str, patch_stride: int = 16) -> None:
        if patch_stride < 1:
            raise InputError(f"patch_stride must be an integer >= 1, got {patch_stride!r}")
        patches, origins, regions = [], [], []
        for k, photo in enumerate(_photos()):
            h, w, _ = photo.shape
            start, stop = _photo_region(w, split)
            tops = np.arange(0, h - _PATCH + 1, patch_stride)
            lefts = np.arange(start, stop - _PATCH + 1, patch_stride)
            windows = np.lib.stride_tricks.sliding_window_view(photo, (_PATCH, _PATCH), (0, 1))
            # windows: (h-31, w-31, 3, 32, 32); the grid picks (len(tops), len(lefts), 3, 32, 32)
            patches.append(windows[tops[:, None], lefts[None, :]].reshape(-1, 3, _PATCH, _PATCH))
            grid = np.stack(np.meshgrid(tops, lefts, indexing="ij"), -1).reshape(-1, 2)
            origins.append(np.concatenate([np.full((len(grid), 1), k), grid], 1))
            regions.append((start, stop))
        super().__init__(torch.from_numpy(np.concatenate(patches)))
        self.origins = torch.from_numpy(np.concatenate(origins)).long()
        self.photos, self.regions = _PHOTOS, tuple(regions)


def load(info: DatasetInfo, root: Path | None, split: str, options: LoadOptions) -> PhotoPatches:
    """One split, on the grid of step ``options.patch_stride``."""
    return PhotoPatches(split, options.patch_stride)


def check(
    info: DatasetInfo, root: Path | None, splits: Sequence[str]
) -> tuple[dict[str, int], str]:
    """Builds every split with the default stride: patches per split."""
    return {s: len(PhotoPatches(s)) for s in splits}, "patches (3, 32, 32), built in"
