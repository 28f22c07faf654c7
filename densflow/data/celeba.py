"""CelebA's aligned faces in torchvision's layout, decoded lazily to 64×64.

On disk: ``celeba/img_align_celeba/000001.jpg`` .. ``202599.jpg`` (178×218 JPEGs, from
``Img/img_align_celeba.zip``) and ``celeba/list_eval_partition.txt`` (from ``Eval/``), one line
``<file>.jpg <p>`` per image with partition ``p`` = 0 train (162,770), 1 valid (19,867), 2 test
(19,962). ``data_dir`` may be the folder holding ``celeba/`` or that folder itself; some mirrors
unzip the images into ``img_align_celeba/img_align_celeba/``, which is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..utils.errors import InputError
from ..utils.reading import MAX_IMAGE_PIXELS, file_kind
from .errors import bad_file, not_found

if TYPE_CHECKING:
    from .types import DatasetInfo, LoadOptions

__all__ = ["CELEBA_CROPS", "CelebA64", "check", "download", "load"]

CELEBA_CROPS = ("official", "center148")
_PARTITIONS = {"train": 0, "valid": 1, "test": 2}


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
            raise InputError(f"unknown CelebA crop {crop!r}; choose one of {CELEBA_CROPS}")
        self.image_dir, self.filenames, self.crop = Path(image_dir), list(filenames), crop

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        path = self.image_dir / self.filenames[index]
        kind = file_kind(path)
        if kind != "regular":  # opening a FIFO would wait for a writer for ever
            raise bad_file("celeba", path, f"is {kind}, not an image file")
        try:
            with Image.open(path) as img:  # reads the header only: the size is known undecoded
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise bad_file(
                        "celeba", path, f"has {img.width}×{img.height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} densflow decodes (an aligned face is 178×218)",
                    )  # fmt: skip
                img = img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as err:  # not an image, truncated, huge
            raise bad_file("celeba", path, f"cannot be decoded as an image ({err})") from err
        if self.crop == "center148":
            w, h = img.size
            left, top = round((w - 148) / 2), round((h - 148) / 2)
            img = img.crop((left, top, left + 148, top + 148))
        img = img.resize((64, 64), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # copy: writable


def _split(info: DatasetInfo, root: Path, split: str) -> tuple[Path, list[str]]:
    """The image folder and the file names of one split, every one checked to exist."""
    folder = root / "celeba" if (root / "celeba").is_dir() else root
    image_dir, table = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    if (image_dir / "img_align_celeba").is_dir():  # some mirrors unzip into a nested folder
        image_dir = image_dir / "img_align_celeba"
    missing = [
        p.name + ("/" if p == image_dir else "") for p in (image_dir, table) if not p.exists()
    ]
    if missing:
        raise not_found(info, folder, missing, folder)
    kind = file_kind(table)
    if kind != "regular":
        raise bad_file(info.name, table, f"is {kind}, not the partition list")
    names = []
    for i, line in enumerate(table.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise bad_file(info.name, table, f"line {i} is {line!r}; expected '<file>.jpg <0|1|2>'")
        if int(fields[1]) == _PARTITIONS[split]:
            names.append(fields[0])
    if not names:
        raise bad_file(info.name, table, f"no image is in the {split!r} partition")
    present = set(os.listdir(image_dir))
    absent = [n for n in names if n not in present]
    if absent:
        raise not_found(info, image_dir, [f"img_align_celeba/{n}" for n in absent], image_dir)
    return image_dir, names


def load(info: DatasetInfo, root: Path, split: str, options: LoadOptions) -> CelebA64:
    """One split, every file checked to exist; images are decoded when indexed."""
    return CelebA64(*_split(info, root, split), crop=options.celeba_crop)


def check(info: DatasetInfo, root: Path, splits: Sequence[str]) -> tuple[dict[str, int], str]:
    """Parses the partition list, checks that every image file exists and decodes one image."""
    found = {s: _split(info, root, s) for s in splits}
    CelebA64(*found[splits[0]])[0]  # decodes: catches files that are not images early
    return {s: len(names) for s, (_, names) in found.items()}, f"images in {root}"


def download(root: Path) -> None:
    """Fetches the aligned images and the annotation lists from Google Drive with torchvision
    (which uses ``gdown`` and checks each file's MD5) into ``root/celeba/``, and unzips them."""
    import torchvision.datasets as tvd

    tvd.CelebA(str(root), split="all", download=True)
