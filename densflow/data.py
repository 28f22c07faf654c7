r"""The datasets of DenseFlow's experiments as uint8 images, and their training-time augmentation.

Every dataset yields uint8 tensors of shape ``(3, S, S)`` with values in ``{0..255}`` (labels are
dropped: the model is unconditional). Dequantization and scaling belong to the model.

* ``cifar10`` (32×32), ``imagenet32`` and ``imagenet64`` (downsampled ImageNet) are read from the
  files users download, into one in-memory array.
* ``celeba`` (64×64) decodes the aligned JPEGs lazily, with two named crop conventions.
* ``photos`` (32×32) needs no download: patches cut from photographs shipped with scikit-image. It
  exists so that notebooks and tests can train on real images anywhere.

A missing or malformed dataset raises one exception type, :class:`DatasetError`, whose message says
which files were expected where, what was found there and where to get the data.

Augmentation (:class:`Augmentation`) works on uint8 *batches* with an explicit generator, so that a
resumed training run draws exactly the same flips and shifts.

Example:
    >>> from densflow.data import augmentation_for, image_shape, load_dataset
    >>> train = load_dataset("photos", None, "train")
    >>> x = train[0]
    >>> x.dtype, tuple(x.shape) == image_shape("photos")
    (torch.uint8, True)
    >>> augmentation_for("imagenet64")
    Augmentation(flip=True, shift=3)
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CELEBA_CROPS",
    "DATASETS",
    "Augmentation",
    "CelebA64",
    "DatasetError",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageTensorDataset",
    "PhotoPatches",
    "augmentation_for",
    "check_dataset",
    "download",
    "image_shape",
    "load_dataset",
    "restricted_unpickle",
]

SPLITS = ("train", "test")
CELEBA_CROPS = ("official", "center148")


# ----------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    r"""Random horizontal flip and integer shift of a uint8 batch.

    Each image is flipped with probability 1/2, then translated by :math:`(d_x, d_y)` drawn
    uniformly from :math:`\{-s..s\}^2` with edge replication,
    :math:`y[c, i, j] = x[c, \mathrm{clamp}(i - d_y), \mathrm{clamp}(j - d_x)]`. This equals padding
    the image by ``s`` pixels (mode ``'replicate'``) and cropping back at the offset
    :math:`(s - d_y, s - d_x)`. All draws come from ``generator`` (flips first, then shifts), never
    from the global RNG or from DataLoader workers, so a resumed run is bit-exact.

    Arguments:
        flip: whether to flip horizontally with probability 1/2.
        shift: the largest shift ``s`` in pixels (0 disables shifting).

    Example:
        >>> aug = Augmentation(flip=True, shift=1)
        >>> x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> aug(x, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 8, 8])
    """

    flip: bool = True
    shift: int = 0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augments a batch ``x`` of shape ``(B, C, H, W)``, dtype uint8; returns the same shape."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        B, C, H, W = x.shape
        if self.shift < 0 or self.shift >= min(H, W):
            raise ValueError(f"shift {self.shift} does not fit images of size {H}x{W}")
        if not self.flip and self.shift == 0:
            return x
        # Draw on the generator's device (CPU generators are the norm), then move the few numbers.
        dev = generator.device
        flip = torch.rand(B, generator=generator, device=dev) < 0.5 if self.flip else None
        if self.shift > 0:
            d = torch.randint(-self.shift, self.shift + 1, (2, B), generator=generator, device=dev)
            dx, dy = d[0].to(x.device), d[1].to(x.device)
        else:
            dx = dy = torch.zeros(B, dtype=torch.long, device=x.device)
        # Source row/column of every output pixel; clamping is the edge replication.
        rows = (torch.arange(H, device=x.device) - dy[:, None]).clamp(0, H - 1)  # (B, H)
        cols = (torch.arange(W, device=x.device) - dx[:, None]).clamp(0, W - 1)  # (B, W)
        if flip is not None:  # flip first, then shift: out[j] = x[W - 1 - clamp(j - dx)]
            cols = torch.where(flip.to(x.device)[:, None], W - 1 - cols, cols)
        x = x.gather(2, rows[:, None, :, None].expand(B, C, H, W))
        return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset (see :data:`DATASETS`).

    Attributes:
        name: the registry key.
        image_size: the side ``S`` of the ``(3, S, S)`` images.
        train_size: images in the full train split.
        test_size: images in the full test split (ImageNet: ``val_data``; CelebA: partition 2).
        files: what ``data_dir`` must hold (relative paths).
        layout: the accepted variants of that layout, in words.
        source: where to get the data.
        manual_download: True when :func:`download` cannot fetch it.
        augmentation: the paper's training augmentation.
        valid_size: images in the validation split, where there is one.
    """

    name: str
    image_size: int
    train_size: int
    test_size: int
    files: tuple[str, ...]
    layout: str
    source: str
    manual_download: bool
    augmentation: Augmentation
    valid_size: int | None = None


_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_IMAGENET_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
_IMAGENET_EXTS = ("", ".npz", ".pkl", ".pickle")


def _imagenet_info(size: int) -> DatasetInfo:
    parts = f"Imagenet{size}_train.zip" if size == 32 else "Imagenet64_train_part1/2.zip"
    return DatasetInfo(
        name=f"imagenet{size}",
        image_size=size,
        train_size=1_281_167,
        test_size=50_000,
        files=_IMAGENET_TRAIN + ("val_data",),
        layout="pickles (no extension) or .npz, flat in data_dir or in its sub-folders, "
        f"e.g. those of the unzipped {parts} and Imagenet{size}_val.zip",
        source=f"manual download: https://image-net.org/download-images.php ('Downsampled ImageNet "
        f"{size}x{size}', pickle or npz version); image-net.org requires an account and login, "
        "so densflow cannot download it for you",
        manual_download=True,
        augmentation=Augmentation(flip=True, shift=1 if size == 32 else 3),
    )


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        image_size=32,
        train_size=50_000,
        test_size=10_000,
        files=tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR_FILES),
        layout="data_dir may also be the cifar-10-batches-py folder itself",
        source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it), or "
        "densflow.data.download('cifar10', root)",
        manual_download=False,
        augmentation=Augmentation(flip=True, shift=1),
    ),
    "imagenet32": _imagenet_info(32),
    "imagenet64": _imagenet_info(64),
    "celeba": DatasetInfo(
        name="celeba",
        image_size=64,
        train_size=162_770,
        test_size=19_962,
        valid_size=19_867,
        files=("celeba/img_align_celeba/", "celeba/list_eval_partition.txt"),
        layout="torchvision's layout; data_dir may also be the celeba folder itself",
        source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Img/img_align_celeba.zip and "
        "Eval/list_eval_partition.txt), or densflow.data.download('celeba', root) (needs gdown)",
        manual_download=False,
        augmentation=Augmentation(flip=True, shift=0),
    ),
    "photos": DatasetInfo(
        name="photos",
        image_size=32,
        train_size=2356,
        test_size=532,
        files=(),
        layout="built in: 32x32 patches of the photographs shipped with scikit-image",
        source="scikit-image (skimage.data), no download",
        manual_download=False,
        augmentation=Augmentation(flip=True, shift=1),
    ),
}
"""Per-dataset facts; sizes of ``photos`` are those of the default ``patch_stride=16``."""


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def image_shape(name: str) -> tuple[int, int, int]:
    """The ``(3, S, S)`` shape of one image of dataset ``name``."""
    size = _info(name).image_size
    return (3, size, size)


def augmentation_for(name: str) -> Augmentation:
    """The paper's training augmentation for dataset ``name`` (flip; shift 1, or 3 at 64×64; CelebA
    flip only)."""
    return _info(name).augmentation


# ----------------------------------------------------------------------------- errors


class DatasetError(Exception):
    """A dataset is missing or malformed; the message says what was expected and where."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data directory or some of its files are missing."""


class DatasetFormatError(DatasetError, ValueError):
    """A data file exists but its content is not what the dataset format prescribes."""


def _few(items: Sequence[str], k: int = 11) -> str:
    """``items`` joined, at most ``k`` shown; runs of 3+ numbers shortened: ``batch_1..5``."""
    parts: list[str] = []
    runs: list[tuple[str, int, int]] = []  # (prefix, first, last) of consecutive numbers
    for item in items:
        m = re.fullmatch(r"(.*?)([1-9]\d*)", item)  # no leading zeros: 007 is not 7
        if m and runs and runs[-1][0] == m[1] and runs[-1][2] + 1 == int(m[2]):
            runs[-1] = (m[1], runs[-1][1], int(m[2]))
        else:
            runs.append((m[1], int(m[2]), int(m[2])) if m else (item, -1, -1))
    for prefix, a, b in runs:
        if a < 0:
            parts.append(prefix)
        else:
            parts += (
                [f"{prefix}{a}..{b}"] if b - a >= 2 else [f"{prefix}{i}" for i in range(a, b + 1)]
            )
    return ", ".join(parts[:k]) + (f", ... ({len(items)} in all)" if len(parts) > k else "")


def _listing(path: Path) -> str:
    """What a directory holds, in a few words, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a directory"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return f"{path} is empty" if not entries else f"{path} holds {_few(entries, 8)}"


def _not_found(name: str, where: Path, missing: Sequence[str], searched: Path) -> DatasetError:
    info = DATASETS[name]
    return DatasetNotFoundError(
        f"{name}: data not found in {where}.\n"
        f"  expected: {_few(info.files)}; {info.layout}\n"
        f"  missing: {_few(missing)}\n"
        f"  found: {_listing(searched)}\n"
        f"  get it: {info.source}"
    )


def _bad(name: str, path: Path, what: str) -> DatasetError:
    return DatasetFormatError(f"{name}: malformed file {path}: {what}")


def _root(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        info = DATASETS[name]
        raise DatasetNotFoundError(
            f"{name}: no data_dir given.\n  expected: {_few(info.files)}\n  get it: {info.source}"
        )
    return Path(data_dir).expanduser()


# ----------------------------------------------------------------------------- safe reading


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 protocol-2 pickles store bytes as _codecs.encode(text, 'latin1'); admit only that.
    if encoding.replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"forbidden codec {encoding!r} in pickle")
    return text.encode("latin1")


def _numpy_core(module: str) -> Any:
    try:  # numpy 2 renamed numpy.core to numpy._core; pickles name either
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # pragma: no cover - numpy 1
        return importlib.import_module(f"numpy.core.{module}")


# The globals that a pickled dict of numpy arrays needs: the ndarray reconstructor of protocols
# <= 4, _frombuffer of protocol 5, numpy scalars, dtypes, and the bytes of Python 3 protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{
        (f"{core}.{module}", fn): getattr(_numpy_core(module), fn)
        for core in ("numpy.core", "numpy._core")
        for module, fn in [
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        ]
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Unpickling calls whatever global the file names: admit only numpy array reconstruction.
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in pickle")
        return _ALLOWED_GLOBALS[module, name]


def restricted_unpickle(path: str | os.PathLike[str]) -> Any:
    """Unpickles a file that may only hold plain values and numpy arrays.

    A pickle can run arbitrary code; this refuses every global except numpy's array and dtype
    reconstruction. Byte strings from Python 2 pickles (CIFAR-10) are decoded as latin-1, the
    encoding numpy expects for their array buffers.

    Raises:
        pickle.UnpicklingError: the file names a forbidden global or is not a pickle.
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="latin1").load()


def _is_zip(path: Path) -> bool:
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
        raise _bad(name, path, "no 'data' array in the .npz") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _bad(name, path, f"unreadable .npz ({err})") from err
    return shape, dtype


def _check_data(name: str, path: Path, shape: tuple[int, ...], dtype: np.dtype, dim: int) -> None:
    if len(shape) != 2 or shape[1] != dim or dtype != np.uint8:
        size = DATASETS[name].image_size
        raise _bad(
            name,
            path,
            f"'data' is {dtype} {shape}; expected uint8 (N, {dim}) = "
            f"(N, 3*{size}*{size}), channel-major",
        )


def _read_data(name: str, path: Path, dim: int) -> np.ndarray:
    """The validated ``data`` array (N, dim) of one batch file (pickle or npz); the rest is
    dropped on return."""
    try:
        if _is_zip(path):
            with np.load(path, allow_pickle=False) as npz:
                if "data" not in npz.files:
                    raise _bad(name, path, f"no 'data' array (keys: {npz.files})")
                data = npz["data"]
        else:
            batch = restricted_unpickle(path)
            if not isinstance(batch, dict) or "data" not in batch:
                keys = list(batch)[:6] if isinstance(batch, dict) else type(batch).__name__
                raise _bad(name, path, f"expected a dict with a 'data' array, got {keys}")
            data = batch["data"]
    except (DatasetError, MemoryError):
        raise
    except Exception as err:  # truncated or corrupt: every failure of the format is the file's
        raise _bad(name, path, f"cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(data, np.ndarray):
        raise _bad(name, path, f"'data' is a {type(data).__name__}, not a numpy array")
    _check_data(name, path, data.shape, data.dtype, dim)
    return data


def _capacity(name: str, path: Path, dim: int) -> int:
    """Exactly (npz header) or at most (pickle: its pixels alone fill the file) the number of
    images in a batch file."""
    if _is_zip(path):
        shape, dtype = _npz_header(name, path)
        _check_data(name, path, shape, dtype, dim)
        return shape[0]
    return path.stat().st_size // dim


def _load_images(name: str, files: Sequence[Path]) -> Tensor:
    """Concatenates the ``data`` of batch files into one ``(N, 3, S, S)`` uint8 tensor.

    Memory: one array of the total size is allocated first and each batch is copied in and dropped
    before the next file is read, so the peak is the dataset plus one batch (never two copies of the
    dataset, as ``np.concatenate`` of all batches would need; ImageNet64's train split is 15.7 GB).
    For pickles the total is bounded by the file sizes and the array is shrunk in place at the end.
    """
    size = DATASETS[name].image_size
    dim = 3 * size * size
    out = np.empty((sum(_capacity(name, f, dim) for f in files), dim), dtype=np.uint8)
    n = 0
    for path in files:
        data = _read_data(name, path, dim)
        if n + len(data) > len(out):
            raise _bad(name, path, f"holds {len(data)} images, more than its size allows")
        out[n : n + len(data)] = data
        n += len(data)
        del data  # drop this batch before the next one is read
    if n < len(out):
        out.resize((n, dim), refcheck=False)  # in place: we hold the only reference
    return torch.from_numpy(out).view(n, 3, size, size)  # channel-major rows → (3, S, S)


# ----------------------------------------------------------------------------- datasets


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


def _cifar_dir(root: Path) -> Path:
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def _cifar_files(root: Path, split: str) -> list[Path]:
    folder = _cifar_dir(root)
    names = _CIFAR_FILES[:5] if split == "train" else _CIFAR_FILES[5:]
    missing = [n for n in _CIFAR_FILES if not (folder / n).is_file()]
    if missing:  # report every missing file, not only this split's: the copy is incomplete
        raise _not_found("cifar10", folder, missing, folder)
    return [folder / n for n in names]


def _imagenet_files(name: str, root: Path, split: str) -> list[Path]:
    """Finds each batch file in ``root`` or one level down; split folders may hold parts of it."""
    if not root.is_dir():
        raise _not_found(name, root, list(DATASETS[name].files), root)
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    stems = _IMAGENET_TRAIN if split == "train" else ("val_data",)
    found, missing = [], []
    for stem in stems:
        hits = [d / (stem + e) for d in dirs for e in _IMAGENET_EXTS if (d / (stem + e)).is_file()]
        if len(hits) > 1:
            raise DatasetFormatError(
                f"{name}: {stem} found more than once ({_few([str(h) for h in hits])}); point "
                "data_dir at the folder of one copy"
            )
        found += hits
        missing += [stem] if not hits else []
    if missing:
        raise _not_found(name, root, missing, root)
    return found


class CelebA64(Dataset[Tensor]):
    """CelebA aligned faces as ``(3, 64, 64)`` uint8, decoded lazily from the JPEGs.

    Crops (``crop``):

    * ``"official"``: the whole 178×218 image is resized to 64×64 (aspect ratio not kept), as in
      the official DenseFlow code.
    * ``"center148"``: the central 148×148 square is cut first, then resized (RealNVP/Glow).

    Resizing uses PIL's bilinear filter, which widens its support when downscaling
    (antialiased); it is the filter torchvision's ``Resize`` applies to PIL images.

    Arguments:
        image_dir: the ``img_align_celeba`` folder.
        filenames: the images of the split, in order.
        crop: ``"official"`` or ``"center148"``.
    """

    def __init__(self, image_dir: Path, filenames: Sequence[str], crop: str = "official") -> None:
        if crop not in CELEBA_CROPS:
            raise ValueError(f"unknown CelebA crop {crop!r}; choose one of {CELEBA_CROPS}")
        self.image_dir, self.filenames, self.crop = Path(image_dir), list(filenames), crop

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        path = self.image_dir / self.filenames[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:  # PIL's UnidentifiedImageError and truncated files
            raise _bad("celeba", path, f"cannot be decoded as an image ({err})") from err
        if self.crop == "center148":
            w, h = img.size
            left, top = round((w - 148) / 2), round((h - 148) / 2)
            img = img.crop((left, top, left + 148, top + 148))
        img = img.resize((64, 64), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # copy: writable


_CELEBA_PARTITIONS = {"train": 0, "valid": 1, "test": 2}


def _celeba_split(root: Path, split: str) -> tuple[Path, list[str]]:
    """The image folder and the file names of one split, every one checked to exist."""
    folder = root / "celeba" if (root / "celeba").is_dir() else root
    image_dir, table = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    if (image_dir / "img_align_celeba").is_dir():  # some mirrors unzip into a nested folder
        image_dir = image_dir / "img_align_celeba"
    missing = [
        p.name + ("/" if p == image_dir else "") for p in (image_dir, table) if not p.exists()
    ]
    if missing:
        raise _not_found("celeba", folder, missing, folder)
    names = []
    for i, line in enumerate(table.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise _bad("celeba", table, f"line {i} is {line!r}; expected '<file>.jpg <0|1|2>'")
        if int(fields[1]) == _CELEBA_PARTITIONS[split]:
            names.append(fields[0])
    if not names:
        raise _bad("celeba", table, f"no image is in the {split!r} partition")
    present = set(os.listdir(image_dir))
    absent = [n for n in names if n not in present]
    if absent:
        raise _not_found("celeba", image_dir, [f"img_align_celeba/{n}" for n in absent], image_dir)
    return image_dir, names


# ----------------------------------------------------------------------------- photos

_PHOTOS = tuple(
    "astronaut chelsea coffee rocket hubble_deep_field immunohistochemistry motorcycle".split()
)
_PHOTO_SIDE = 320  # shorter side after resizing: 32 px patches then show object parts, not texture
_PHOTO_GAP = 32  # columns between the train and the test region of each photo
_PATCH = 32


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The photographs, each resized (Lanczos) to a shorter side of 320 px, ``(H, W, 3)`` uint8."""
    import skimage.data
    from PIL import Image

    out = []
    for name in _PHOTOS:  # all are RGB and bundled with scikit-image (no download)
        img = (
            skimage.data.stereo_motorcycle()[0]
            if name == "motorcycle"
            else getattr(skimage.data, name)()
        )
        h, w = img.shape[:2]
        scale = _PHOTO_SIDE / min(h, w)
        size = (round(w * scale), round(h * scale))
        arr = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
        arr.setflags(write=False)  # cached and shared
        out.append(arr)
    return tuple(out)


def _photo_region(width: int, split: str) -> tuple[int, int]:
    """Columns ``[start, stop)`` of a photo that a split may use: train the left 80 % less a gap
    of 32 columns, test the right 20 %."""
    cut = round(0.8 * width)
    return (0, cut - _PHOTO_GAP) if split == "train" else (cut, width)


class PhotoPatches(ImageTensorDataset):
    """32×32 patches of real photographs shipped with scikit-image; needs no download.

    Photos: astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry and the
    left view of stereo_motorcycle (all RGB; the greyscale ones and the mostly black retina are left
    out), resized to a shorter side of 320 px. Train patches come from the left 80 % of each photo's
    columns less 32, test patches from the right 20 %, so no pixel of a test patch lies within 32 px
    of a train patch. Patches lie on a grid of step ``patch_stride``; nothing is random. With the
    default stride 16 there are 2356 train and 532 test patches.

    Attributes:
        images: ``(N, 3, 32, 32)`` uint8.
        origins: ``(N, 3)`` int64 rows of (photo index, top, left) of each patch.
        photos: the photo names, indexed by ``origins[:, 0]``.
        regions: the columns ``[start, stop)`` of each photo that this split used.
    """

    def __init__(self, split: str, patch_stride: int = 16) -> None:
        if patch_stride < 1:
            raise ValueError(f"patch_stride must be positive, got {patch_stride}")
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


# ----------------------------------------------------------------------------- public entry points


def _check_split(name: str, split: str) -> None:
    allowed = SPLITS + (("valid",) if name == "celeba" else ())
    if split not in allowed:
        raise ValueError(f"{name} has splits {allowed}, not {split!r}")


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
        name: ``"cifar10"``, ``"imagenet32"``, ``"imagenet64"``, ``"celeba"`` or ``"photos"``.
        data_dir: the folder holding the files listed in ``DATASETS[name].files``; unused by
            ``"photos"``.
        split: ``"train"`` or ``"test"`` (ImageNet: ``val_data``); CelebA also ``"valid"``.
        celeba_crop: ``"official"`` (resize the whole image) or ``"center148"``; see
            :class:`CelebA64`.
        patch_stride: the grid step of ``"photos"`` patches.

    Returns:
        An :class:`ImageTensorDataset` held in memory (its ``images`` tensor can be indexed with a
        whole batch of indices) for every dataset but CelebA, a lazily decoding :class:`CelebA64`
        for CelebA.

    Raises:
        DatasetError: the data are missing or malformed (the message says what and where).
    """
    _info(name)
    _check_split(name, split)
    if name == "photos":
        return PhotoPatches(split, patch_stride)
    root = _root(name, data_dir)
    if name == "cifar10":
        return ImageTensorDataset(_load_images(name, _cifar_files(root, split)))
    if name == "celeba":
        return CelebA64(*_celeba_split(root, split), crop=celeba_crop)
    return ImageTensorDataset(_load_images(name, _imagenet_files(name, root, split)))


def check_dataset(
    name: str, data_dir: str | os.PathLike[str] | None, split: str | None = None
) -> str:
    """Validates a dataset quickly and returns a one-line summary.

    Checks that every file is there; CIFAR-10 is loaded whole (it is small), ImageNet ``.npz`` files
    have their array headers read, ImageNet pickles are checked to start and end like a pickle
    (which catches truncated downloads), CelebA's partition list is parsed and one image decoded.

    Arguments:
        name: the dataset.
        data_dir: as for :func:`load_dataset`.
        split: check only this split (e.g. ``"test"`` for an evaluation-only copy of ImageNet's
            ``val_data``); None checks them all.

    Raises:
        DatasetError: as :func:`load_dataset` would, but before any long load.
    """
    _info(name)
    every = ("train", "valid", "test") if name == "celeba" else SPLITS
    splits = every if split is None else (split,)
    for s in splits:
        _check_split(name, s)
    if name == "photos":
        n = {s: len(PhotoPatches(s)) for s in splits}
        return f"photos: {_counts(n)} patches (3, 32, 32), built in"
    root = _root(name, data_dir)
    if name == "cifar10":
        n = {s: len(_load_images(name, _cifar_files(root, s))) for s in splits}
        return f"cifar10: {_counts(n)} images (3, 32, 32) in {_cifar_dir(root)}"
    if name == "celeba":
        found = {s: _celeba_split(root, s) for s in splits}
        CelebA64(*found[splits[0]])[0]  # decodes: catches files that are not images early
        return f"celeba: {_counts({s: len(v[1]) for s, v in found.items()})} images in {root}"
    files = {s: _imagenet_files(name, root, s) for s in splits}
    dim = 3 * DATASETS[name].image_size ** 2
    for path in sum(files.values(), []):
        if _is_zip(path):
            _capacity(name, path, dim)  # reads and checks the npz header
        else:
            with open(path, "rb") as f:
                head, _ = f.read(1), f.seek(-1, os.SEEK_END)
                if head != b"\x80" or f.read(1) != b".":  # PROTO opcode first, STOP opcode last
                    raise _bad(name, path, "not a complete pickle (truncated download?)")
    return f"{name}: {_counts({s: len(f) for s, f in files.items()})} batch files in {root}"


def _counts(n: dict[str, int]) -> str:
    return " + ".join(f"{v} {k}" for k, v in n.items())


def download(name: str, root: str | os.PathLike[str]) -> Path:
    """Downloads a dataset with torchvision into ``root`` and returns the ``data_dir`` to use.

    CIFAR-10 and CelebA use torchvision's downloaders (CelebA needs the ``gdown`` package and
    Google Drive may refuse it when busy). ImageNet32/64 cannot be downloaded automatically: they
    require an image-net.org login. ``photos`` needs nothing.

    Raises:
        DatasetError: the dataset needs a manual download, or the download failed.
    """
    info = _info(name)
    root = Path(root).expanduser()
    if name == "photos":
        return root
    if info.manual_download:
        raise DatasetNotFoundError(
            f"{name} cannot be downloaded automatically.\n  get it: "
            f"{info.source}\n  then: {_few(info.files)}; {info.layout}"
        )
    import torchvision.datasets as tvd

    try:
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=True, download=True)
        else:
            tvd.CelebA(str(root), split="all", download=True)
    except Exception as err:  # network, quota, missing gdown, bad archive: all end the same way
        raise DatasetNotFoundError(
            f"{name}: download into {root} failed ({type(err).__name__}: {err}).\n"
            f"  get it by hand: {info.source}\n  expected: {_few(info.files)}; {info.layout}"
        ) from err
    return root
