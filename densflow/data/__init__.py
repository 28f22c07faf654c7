r"""The datasets of DenseFlow's experiments as uint8 images, and their training-time augmentation.

Every dataset yields uint8 tensors of shape ``(3, S, S)`` with values in ``{0..255}`` (labels are
dropped: the model is unconditional). Dequantization and scaling belong to the model.

* ``cifar10`` (32×32, :mod:`~densflow.data.cifar`), ``imagenet32`` and ``imagenet64``
  (downsampled ImageNet, :mod:`~densflow.data.imagenet`) are read from the files users download,
  into one in-memory array.
* ``celeba`` (64×64, :mod:`~densflow.data.celeba`) decodes the aligned JPEGs lazily, with two
  named crop conventions.
* ``photos`` (32×32, :mod:`~densflow.data.photos`) needs no download: patches cut from seven
  photographs that ship inside the package. It exists so that notebooks and tests can train on
  real images anywhere.

Each dataset's facts (files, shapes, splits, download, augmentation, the paper's protocol and
results) live in one entry of :data:`DATASETS` (:mod:`~densflow.data.registry`); the functions here
dispatch on it. A missing or malformed dataset raises one exception type, :class:`DatasetError`,
whose message says which files were expected where, what was found there and where to get the data.

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

from .arrays import ImageTensorDataset
from .augmentation import Augmentation
from .celeba import CELEBA_CROPS, CelebA64
from .downloads import MissingDependencyError, download, require
from .errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from .loading import check_dataset, load_dataset
from .photos import PhotoPatches
from .registry import (
    DATASETS,
    augmentation_for,
    dataset_info,
    downloadable,
    image_shape,
    paper_datasets,
    paper_table1,
)
from .types import DatasetInfo, LoadOptions, PaperResult, TrainingProtocol
from .unpickle import AllowList, restricted_unpickle

__all__ = [
    "CELEBA_CROPS",
    "DATASETS",
    "AllowList",
    "Augmentation",
    "CelebA64",
    "DatasetError",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageTensorDataset",
    "LoadOptions",
    "MissingDependencyError",
    "PaperResult",
    "PhotoPatches",
    "TrainingProtocol",
    "augmentation_for",
    "check_dataset",
    "dataset_info",
    "download",
    "downloadable",
    "image_shape",
    "load_dataset",
    "paper_datasets",
    "paper_table1",
    "require",
    "restricted_unpickle",
]
