"""The types of the data registry (:mod:`densflow.data.registry`): what a dataset entry holds
(:class:`DatasetInfo`), the paper's training protocol (:class:`TrainingProtocol`, Appendix C) and
results (:class:`PaperResult`, Table 1) for it, and the loading options (:class:`LoadOptions`).

They live apart from the registry so that the format modules (:mod:`~densflow.data.cifar`,
:mod:`~densflow.data.imagenet`...) can name them while the registry imports those modules' ``load``
and ``check``: the imports go one way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from .augmentation import Augmentation

__all__ = ["PAPER_MODEL", "DatasetInfo", "LoadOptions", "PaperResult", "TrainingProtocol"]

PAPER_MODEL = "DenseFlow-74-10"
"""The paper's architecture, whose results :class:`PaperResult` holds."""


@dataclass(frozen=True)
class LoadOptions:
    """Options of :func:`~densflow.data.load_dataset` that some formats use.

    Attributes:
        celeba_crop: CelebA's crop, ``"official"`` or ``"center148"`` (see
            :class:`~densflow.data.CelebA64`).
        patch_stride: the grid step of the ``photos`` patches.
    """

    celeba_crop: str = "official"
    patch_stride: int = 16


@dataclass(frozen=True)
class PaperResult:
    """What the paper reports for a dataset.

    Attributes:
        bpd: DenseFlow-74-10's test bits/dim (Table 1).
        iw_samples: ``k`` of the importance-weighted bound that ``bpd`` is (eq. 21, Appendix D).
        cost: the training time the paper reports.
        compared: Table 1's test bits/dim of the flows compared with, ``(model, bpd)`` pairs
            (None: not reported).
    """

    bpd: float
    iw_samples: int
    cost: str
    compared: tuple[tuple[str, float | None], ...]


@dataclass(frozen=True)
class TrainingProtocol:
    """The paper's training protocol for a dataset (Appendix C); the defaults are those every
    dataset shares ("the same as in ImageNet32 training"). Names match the training config's.

    Attributes:
        epochs: training epochs.
        finetune_epochs: fine-tuning epochs after them, at ``finetune_lr``.
        batch_size: images per step.
        gamma: exponential learning-rate decay factor applied after every epoch.
        lr: Adamax learning rate after the linear warm-up.
        finetune_lr: learning rate of the fine-tuning epochs.
        warmup_steps: steps of linear learning-rate warm-up.
        optimizer: the optimizer's name.
        eval_every: epochs between test evaluations (densflow's choice, not the paper's: a
            CIFAR-10 evaluation after each of its 650 epochs would add about 7 %).
        official_epochs: the epochs the official scripts run, where they differ from the paper.
        official_finetune_epochs: the same for fine-tuning.
    """

    epochs: int
    finetune_epochs: int
    batch_size: int
    gamma: float = 0.95
    lr: float = 1e-3
    finetune_lr: float = 2e-5
    warmup_steps: int = 5000
    optimizer: str = "adamax"
    eval_every: int = 1
    official_epochs: int | None = None
    official_finetune_epochs: int | None = None

    def train_fields(self, official: bool = False) -> dict[str, Any]:
        """The protocol as training-config fields; ``official``: with the official scripts'
        epochs.

        Example:
            >>> cifar10 = TrainingProtocol(580, 70, 64, gamma=0.9975, official_epochs=400)
            >>> cifar10.train_fields(official=True)["epochs"]
            400
        """
        fields = {
            k: getattr(self, k)
            for k in (
                "epochs",
                "finetune_epochs",
                "batch_size",
                "gamma",
                "lr",
                "finetune_lr",
                "warmup_steps",
                "optimizer",
                "eval_every",
            )
        }
        if official and self.official_epochs is not None:
            fields["epochs"] = self.official_epochs
        if official and self.official_finetune_epochs is not None:
            fields["finetune_epochs"] = self.official_finetune_epochs
        return fields


Loader = Callable[["DatasetInfo", Path | None, str, LoadOptions], Dataset[Tensor]]
Checker = Callable[["DatasetInfo", Path | None, Sequence[str]], tuple[dict[str, int], str]]


@dataclass(frozen=True)
class DatasetInfo:
    """Every fact about one dataset (see :data:`DATASETS`).

    Attributes:
        name: the registry key.
        image_size: the side ``S`` of the ``(3, S, S)`` uint8 images.
        train_size: images in the full train split.
        test_size: images in the full test split (ImageNet: ``val_data``; CelebA: partition 2).
        files: what ``data_dir`` must hold (relative paths); empty when nothing is read from disk.
        layout: the accepted variants of that layout, in words.
        source: where to get the files by hand.
        augmentation: the paper's training augmentation.
        load: the format's reader of one split, ``load(info, root, split, options)``; ``root`` is
            None when ``files`` is empty.
        check: the format's quick validation, ``check(info, root, splits)`` → (count per split,
            what was counted and where).
        splits: the split names, in order.
        valid_size: images in the validation split, where there is one.
        download: fetches the files into a folder, ``download(root)``; None when only a manual
            download is possible (or nothing is needed).
        download_needs: ``(module, pip extra)`` that ``download`` imports beyond the base install.
        official_name: the name the official code gives the dataset (its ``args.dataset``), if it
            knows it.
        paper: what the paper reports for it, if it is one of the paper's datasets.
        protocol: the paper's training protocol for it, likewise.
    """

    name: str
    image_size: int
    train_size: int
    test_size: int
    files: tuple[str, ...]
    layout: str
    source: str
    augmentation: Augmentation
    load: Loader
    check: Checker
    splits: tuple[str, ...] = ("train", "test")
    valid_size: int | None = None
    download: Callable[[Path], None] | None = None
    download_needs: tuple[str, str] | None = None
    official_name: str | None = None
    paper: PaperResult | None = None
    protocol: TrainingProtocol | None = None

    @property
    def manual_download(self) -> bool:
        """True when the files must be fetched by hand (see ``source``)."""
        return self.download is None and bool(self.files)

    @property
    def how_to_get(self) -> str:
        """Where and how to get the files, for messages: ``source``, then the command that
        downloads them, if any."""
        if self.download is None:
            return self.source
        needs = (
            f' (needs pip install -e ".[{self.download_needs[1]}]")' if self.download_needs else ""
        )
        command = f"python -m densflow data download {self.name} --data-dir DIR"
        return f"{self.source}; or {command}{needs}"

    def split_size(self, split: str) -> int:
        """Images in the full ``split``."""
        return {"train": self.train_size, "test": self.test_size, "valid": self.valid_size}[split]
