"""One entry per dataset, holding every fact about it that densflow uses (the types of an entry
are in :mod:`densflow.data.types`).

A :class:`DatasetInfo` says how the dataset lies on disk and how to read it (its format module's
``load`` and ``check``), its image shape and splits, how to get it (a ``download`` function, or the
manual ``source``), its training augmentation, the paper's training protocol
(:class:`TrainingProtocol`, Appendix C) and the paper's results (:class:`PaperResult`, Table 1).
Loading, checking, downloading, evaluation, the reproduction notebooks and the official-checkpoint
converter all read these entries; none of them names a dataset in its code.

To add a dataset: write one module with ``load(info, root, split, options)`` and
``check(info, root, splits)`` (see :mod:`densflow.data.cifar`), and add its entry to
:data:`DATASETS`.
"""

from __future__ import annotations

from ..utils.errors import InputError
from . import celeba, cifar, imagenet, photos
from .augmentation import Augmentation
from .types import PAPER_MODEL, DatasetInfo, PaperResult, TrainingProtocol

__all__ = [
    "DATASETS",
    "augmentation_for",
    "dataset_info",
    "downloadable",
    "image_shape",
    "paper_datasets",
    "paper_table1",
]


def _imagenet(size: int, paper: PaperResult, protocol: TrainingProtocol) -> DatasetInfo:
    """Downsampled ImageNet at ``size``×``size``: the two differ in size, shift and paper facts."""
    return DatasetInfo(
        name=f"imagenet{size}",
        image_size=size,
        train_size=1_281_167,
        test_size=50_000,
        files=imagenet.TRAIN_FILES + (imagenet.VAL_FILE,),
        layout=imagenet.layout(size),
        source="manual download: https://image-net.org/download-images.php ('Downsampled "
        f"ImageNet {size}x{size}', pickle or npz version); image-net.org requires an account "
        "and login, so densflow cannot download it for you",
        augmentation=Augmentation(flip=True, shift=1 if size == 32 else 3),
        load=imagenet.load,
        check=imagenet.check,
        official_name=f"imagenet{size}",
        paper=paper,
        protocol=protocol,
    )


_CELEBA_DRIVE = "https://drive.google.com/uc?id="

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        image_size=32,
        train_size=50_000,
        test_size=10_000,
        files=tuple(f"{cifar.FOLDER}/{f}" for f in cifar.FILES),
        layout=f"data_dir may also be the {cifar.FOLDER} folder itself",
        source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it)",
        augmentation=Augmentation(flip=True, shift=1),
        load=cifar.load,
        check=cifar.check,
        download=cifar.download,
        official_name="cifar10",
        paper=PaperResult(
            bpd=2.98,
            iw_samples=1000,
            cost="about 250 GPU-hours (one RTX 3090)",
            compared=(("VFlow", 2.98), ("Flow++", 3.08), ("Glow", 3.35)),
        ),
        protocol=TrainingProtocol(
            epochs=580,
            finetune_epochs=70,
            batch_size=64,
            gamma=0.9975,
            eval_every=10,
            official_epochs=400,
            official_finetune_epochs=20,
        ),
    ),
    "imagenet32": _imagenet(
        32,
        PaperResult(
            bpd=3.63,
            iw_samples=200,
            cost="about 310 GPU-hours (one V100)",
            compared=(("VFlow", 3.83), ("Flow++", 3.86), ("Glow", 4.09)),
        ),
        TrainingProtocol(epochs=20, finetune_epochs=2, batch_size=64),
    ),
    "imagenet64": _imagenet(
        64,
        PaperResult(
            bpd=3.35,
            iw_samples=200,
            cost="about 2 weeks (one V100)",
            compared=(("VFlow", 3.66), ("Flow++", 3.69), ("Glow", 3.81)),
        ),
        TrainingProtocol(epochs=10, finetune_epochs=1, batch_size=32),
    ),
    "celeba": DatasetInfo(
        name="celeba",
        image_size=64,
        train_size=162_770,
        test_size=19_962,
        valid_size=19_867,
        splits=("train", "valid", "test"),
        files=("celeba/img_align_celeba/", "celeba/list_eval_partition.txt"),
        layout="torchvision's layout; data_dir may also be the celeba folder itself",
        source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: Img/img_align_celeba.zip "
        f"({_CELEBA_DRIVE}0B7EVK8r0v71pZjFTYXZWM3FlRnM, unzip it into celeba/) and "
        f"Eval/list_eval_partition.txt ({_CELEBA_DRIVE}0B7EVK8r0v71pY0NSMzRuSXJEVkk, into celeba/)",
        augmentation=Augmentation(flip=True, shift=0),
        load=celeba.load,
        check=celeba.check,
        download=celeba.download,
        download_needs=("gdown", "download"),
        official_name="celeba",
        paper=PaperResult(
            bpd=1.99,
            iw_samples=200,
            cost="about 224 GPU-hours (one V100)",
            compared=(("VFlow", None), ("Flow++", None), ("Glow", None)),
        ),
        protocol=TrainingProtocol(epochs=50, finetune_epochs=5, batch_size=32),
    ),
    "photos": DatasetInfo(
        name="photos",
        image_size=32,
        train_size=2356,
        test_size=532,
        files=(),
        layout="built in: 32x32 patches of seven photographs shipped with densflow",
        source="scikit-image's sample photographs, shipped in densflow/data/assets (no download)",
        augmentation=Augmentation(flip=True, shift=1),
        load=photos.load,
        check=photos.check,
    ),
}
"""Dataset name → :class:`DatasetInfo`. Sizes of ``photos`` are those of the default
``patch_stride=16``."""


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an unknown name is a ``ValueError`` listing the known."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def image_shape(name: str) -> tuple[int, int, int]:
    """The ``(3, S, S)`` shape of one image of dataset ``name``."""
    size = dataset_info(name).image_size
    return (3, size, size)


def augmentation_for(name: str) -> Augmentation:
    """The paper's training augmentation for dataset ``name`` (flip; shift 1, or 3 at 64×64; CelebA
    flip only)."""
    return dataset_info(name).augmentation


def downloadable() -> tuple[str, ...]:
    """The datasets :func:`~densflow.data.download` can fetch.

    Example:
        >>> downloadable()
        ('cifar10', 'celeba')
    """
    return tuple(name for name, info in DATASETS.items() if info.download is not None)


def paper_datasets() -> dict[str, DatasetInfo]:
    """The entries of the paper's datasets (those with a :class:`PaperResult`), in order."""
    return {name: info for name, info in DATASETS.items() if info.paper is not None}


def paper_table1() -> dict[str, dict[str, float | None]]:
    """Table 1's test bits/dim: model → dataset → bits/dim, DenseFlow-74-10 first.

    Example:
        >>> paper_table1()["Glow"]["imagenet64"]
        3.81
    """
    table: dict[str, dict[str, float | None]] = {PAPER_MODEL: {}}
    for name, info in paper_datasets().items():
        assert info.paper is not None
        table[PAPER_MODEL][name] = info.paper.bpd
        for model, bpd in info.paper.compared:
            table.setdefault(model, {})[name] = bpd
    return table
