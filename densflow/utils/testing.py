"""Writers of tiny datasets in the exact on-disk formats that :mod:`densflow.data` reads.

Tests (and the reproduction notebooks' tests) use them instead of the real data, which cannot be
downloaded there. Each writer returns the images it wrote, so a test can compare them pixel for
pixel with what the loader gives back.

* CIFAR-10: Python-2 protocol-2 pickles, as in ``cifar-10-python.tar.gz``: byte-string keys
  ``data``, ``labels``, ``batch_label``, ``filenames`` (read back as ``str`` with latin-1), ``data``
  uint8 (N, 3072) channel-major, numpy globals under ``numpy.core.multiarray``.
* Downsampled ImageNet: Python 3 pickles (dicts ``data`` uint8 (N, 3·S·S), ``labels`` 1..1000,
  ``mean`` for train) or ``.npz`` with the same keys, flat or in the release's split folders.
* CelebA: 178×218 JPEGs in ``celeba/img_align_celeba/`` and ``celeba/list_eval_partition.txt``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["FixtureData", "py2_pickle_dumps", "write_celeba", "write_cifar10", "write_imagenet"]


@dataclass(frozen=True)
class FixtureData:
    """What a writer wrote.

    Attributes:
        root: the ``data_dir`` to pass to :func:`densflow.data.load_dataset`.
        train: the train images in file order, ``(N, 3, H, W)`` uint8.
        test: the test images (ImageNet: ``val_data``), ``(N, 3, H, W)`` uint8.
        valid: CelebA's validation images, else None.
    """

    root: Path
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None = None


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit Python 2's opcodes
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytestring(self, raw: bytes, obj: Any) -> None:
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        self._save_bytestring(obj, obj)

    def save_str(self, obj: str) -> None:  # Python 2's str is a byte string
        self._save_bytestring(obj.encode("latin1"), obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        # numpy 2 lives in numpy._core; the CIFAR files (numpy 1, Python 2) name numpy.core.
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle_dumps(obj: Any) -> bytes:
    """Pickles ``obj`` the way Python 2's ``cPickle.dump(obj, f, 2)`` did (as in CIFAR-10)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def write_cifar10(
    root: str | os.PathLike[str], n_train_per_batch: int = 4, n_test: int = 5, seed: int = 0
) -> FixtureData:
    """Writes ``root/cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and
    ``batches.meta``; ``root`` is the data_dir."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": _images(rng, n_train_per_batch, 32) for i in range(1, 6)}
    batches["test_batch"] = _images(rng, n_test, 32)
    for k, (fname, x) in enumerate(batches.items()):
        label = "testing batch 1 of 1" if fname == "test_batch" else f"training batch {k + 1} of 5"
        batch = {
            "batch_label": label,
            "labels": [int(v) for v in rng.integers(0, 10, len(x))],
            "data": x.reshape(len(x), 3072),  # channel-major rows: R plane, G plane, B plane
            "filenames": [f"image_{k}_{i}.png" for i in range(len(x))],
        }
        (folder / fname).write_bytes(py2_pickle_dumps(batch))
    meta = {
        "num_cases_per_batch": n_train_per_batch,
        "num_vis": 3072,
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
    }
    (folder / "batches.meta").write_bytes(py2_pickle_dumps(meta))
    train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    return FixtureData(Path(root), train, batches["test_batch"])


def write_imagenet(
    root: str | os.PathLike[str],
    size: int = 32,
    n_train_per_batch: int = 3,
    n_val: int = 4,
    fmt: str = "pickle",
    layout: str = "flat",
    num_batches: int = 10,
    seed: int = 0,
) -> FixtureData:
    """Writes downsampled ImageNet batch files ``train_data_batch_1..num_batches`` and ``val_data``.

    Arguments:
        root: the data_dir.
        size: 32 or 64.
        fmt: ``"pickle"`` (files without extension) or ``"npz"``.
        layout: ``"flat"`` (all in ``root``) or ``"split"``: the release's folders,
            ``Imagenet32_train/`` or ``Imagenet64_train_part1/`` (batches 1-5) and ``_part2/``
            (6-10), and ``Imagenet{size}_val/``; with ``_npz`` appended for npz.
        num_batches: fewer than 10 makes an incomplete copy.
    """
    if fmt not in ("pickle", "npz") or layout not in ("flat", "split"):
        raise InputError(
            f"fmt must be 'pickle' or 'npz' and layout 'flat' or 'split'; got {fmt}, {layout}"
        )
    rng = np.random.default_rng(seed)
    root = Path(root)
    suffix = "_npz" if fmt == "npz" else ""

    def folder(i: int | None) -> Path:  # i: train batch number, None: val
        if layout == "flat":
            return root
        if i is None:
            return root / f"Imagenet{size}_val{suffix}"
        part = "" if size == 32 else f"_part{1 if i <= 5 else 2}"
        return root / f"Imagenet{size}_train{part}{suffix}"

    def write(path: Path, x: np.ndarray, train: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = x.reshape(len(x), 3 * size * size)
        batch: dict[str, Any] = {
            "data": data,
            "labels": [int(v) for v in rng.integers(1, 1001, len(x))],
        }
        if train:
            batch["mean"] = data.mean(0)
        if fmt == "npz":
            np.savez(
                path.with_name(path.name + ".npz"), **{k: np.asarray(v) for k, v in batch.items()}
            )
        else:
            path.write_bytes(pickle.dumps(batch))

    train = [_images(rng, n_train_per_batch, size) for _ in range(num_batches)]
    for i, x in enumerate(train, 1):
        write(folder(i) / f"train_data_batch_{i}", x, train=True)
    val = _images(rng, n_val, size)
    write(folder(None) / "val_data", val, train=False)
    return FixtureData(root, np.concatenate(train), val)


def write_celeba(root: str | os.PathLike[str], n_images: int = 10, seed: int = 0) -> FixtureData:
    """Writes ``root/celeba/img_align_celeba/000001.jpg...`` (178×218, JPEG quality 95) and
    ``list_eval_partition.txt`` (contiguous 80/10/10 % train/valid/test, as in CelebA).

    The images are smooth random colour fields, so JPEG changes them by a few levels at most and a
    test can compare the loaded crops with crops of the returned originals.
    """
    from PIL import Image

    if n_images < 3:
        raise InputError("write_celeba needs at least 3 images (one per partition)")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:218, 0:178] / np.array([218.0, 178.0])[:, None, None]
    images = []
    for i in range(n_images):  # a sum of a few low-frequency waves per channel
        f, p, a = (
            rng.uniform(0.5, 3, (3, 3, 2)),
            rng.uniform(0, 6.3, (3, 3)),
            rng.uniform(20, 40, (3, 3)),
        )
        waves = a[..., None, None] * np.sin(
            2 * np.pi * (f[..., 0, None, None] * yy + f[..., 1, None, None] * xx)
            + p[..., None, None]
        )
        img = np.clip(128 + waves.sum(1), 0, 255).round().astype(np.uint8)  # (3, 218, 178)
        Image.fromarray(img.transpose(1, 2, 0)).save(
            folder / "img_align_celeba" / f"{i + 1:06d}.jpg", quality=95
        )
        images.append(img)
    n_valid = max(1, round(0.1 * n_images))
    n_train = min(max(1, round(0.8 * n_images)), n_images - n_valid - 1)  # keep one test image
    parts = [0] * n_train + [1] * n_valid + [2] * (n_images - n_train - n_valid)
    lines = [f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(parts)]
    (folder / "list_eval_partition.txt").write_text("".join(lines))
    x, parts_arr = np.stack(images), np.array(parts)
    return FixtureData(Path(root), x[parts_arr == 0], x[parts_arr == 2], x[parts_arr == 1])
