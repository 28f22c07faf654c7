r"""Batch files of uint8 images, and the in-memory dataset they are loaded into.

CIFAR-10 and downsampled ImageNet ship their images in *batch files*: each holds a dict whose
``data`` entry is a uint8 array of shape ``(N, 3·S·S)``, one image per row, channel-major (the
``S·S`` red values, then green, then blue, each plane row by row). A batch file is either

* a pickle (no extension, ``.pkl`` or ``.pickle``; Python 2 protocol 2 for CIFAR-10, Python 3 for
  ImageNet), read with :func:`~densflow.data.unpickle.restricted_unpickle`, or
* an ``.npz`` (a zip of ``.npy`` arrays, ImageNet's alternative download), read with
  ``allow_pickle=False``.

The other entries (labels, file names, the mean image) are dropped: the model is unconditional.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DatasetError, bad_file
from .unpickle import restricted_unpickle

if TYPE_CHECKING:
    from .types import DatasetInfo

__all__ = ["ImageTensorDataset", "batch_capacity", "is_zip", "load_batches"]


class ImageTensorDataset(Dataset[Tensor]):
    """Images held in memory as one uint8 tensor.

    Arguments:
        images: all images, shape ``(N, 3, S, S)``, uint8. Training loops may index it directly
            with a batch of indices instead of going through ``__getitem__``.
    """

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (an ``.npz``), by its first bytes."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _npz_header(name: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``data`` in an ``.npz`` without reading the array."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
    except KeyError:
        raise bad_file(name, path, "no 'data' array in the .npz") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise bad_file(name, path, f"unreadable .npz ({err})") from err
    return shape, dtype


def _check_data(info: DatasetInfo, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    size, dim = info.image_size, 3 * info.image_size**2
    if len(shape) != 2 or shape[1] != dim or dtype != np.uint8:
        raise bad_file(
            info.name,
            path,
            f"'data' is {dtype} {shape}; expected uint8 (N, {dim}) = "
            f"(N, 3*{size}*{size}), channel-major",
        )


def _read_data(info: DatasetInfo, path: Path) -> np.ndarray:
    """The validated ``data`` array (N, 3·S·S) of one batch file (pickle or npz); the rest is
    dropped on return."""
    name = info.name
    try:
        if is_zip(path):
            with np.load(path, allow_pickle=False) as npz:
                if "data" not in npz.files:
                    raise bad_file(name, path, f"no 'data' array (keys: {npz.files})")
                data = npz["data"]
        else:
            batch = restricted_unpickle(path)
            if not isinstance(batch, dict) or "data" not in batch:
                keys = list(batch)[:6] if isinstance(batch, dict) else type(batch).__name__
                raise bad_file(name, path, f"expected a dict with a 'data' array, got {keys}")
            data = batch["data"]
    except (DatasetError, MemoryError):
        raise
    except Exception as err:  # truncated or corrupt: every failure of the format is the file's
        raise bad_file(name, path, f"cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(data, np.ndarray):
        raise bad_file(name, path, f"'data' is a {type(data).__name__}, not a numpy array")
    _check_data(info, path, data.shape, data.dtype)
    return data


def batch_capacity(info: DatasetInfo, path: Path) -> int:
    """Exactly (npz: its header, which is checked) or at most (pickle: its pixels alone fill the
    file) the number of images in a batch file. A pickle must start and end as one (the PROTO
    opcode, the STOP opcode), which catches a truncated download, and a file of another kind
    before its size is taken for images and allocated."""
    if is_zip(path):
        shape, dtype = _npz_header(info.name, path)
        _check_data(info, path, shape, dtype)
        return shape[0]
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1)
        f.seek(max(size - 1, 0))
        tail = f.read(1)
    if size < 2 or head != b"\x80" or tail != b".":
        raise bad_file(info.name, path, "not a complete pickle (truncated download?)")
    return size // (3 * info.image_size**2)


def load_batches(info: DatasetInfo, files: Sequence[Path]) -> Tensor:
    """Concatenates the ``data`` of batch files into one ``(N, 3, S, S)`` uint8 tensor.

    Memory: one array of the total size is allocated first and each batch is copied in and dropped
    before the next file is read, so the peak is the dataset plus one batch (never two copies of the
    dataset, as ``np.concatenate`` of all batches would need; ImageNet64's train split is 15.7 GB).
    For pickles the total is bounded by the file sizes and the array is shrunk in place at the end.
    """
    size = info.image_size
    dim = 3 * size * size
    out = np.empty((sum(batch_capacity(info, f) for f in files), dim), dtype=np.uint8)
    n = 0
    for path in files:
        data = _read_data(info, path)
        if n + len(data) > len(out):
            raise bad_file(info.name, path, f"holds {len(data)} images, more than its size allows")
        out[n : n + len(data)] = data
        n += len(data)
        del data  # drop this batch before the next one is read
    if n < len(out):
        out.resize((n, dim), refcheck=False)  # in place: we hold the only reference
    return torch.from_numpy(out).view(n, 3, size, size)  # channel-major rows → (3, S, S)
