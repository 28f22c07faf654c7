"""What training, evaluation, reproduction and the command line share: the device, batches of
images, the first images of a split, and progress that stays visible wherever a run is watched.

* On a terminal: a ``tqdm`` bar, refreshed twice a second.
* In a Jupyter kernel (and so in papermill's output notebook): ``tqdm.auto``'s bar.
* Anywhere else (``densflow train ... > log 2>&1``, a batch job): no bar; the ``logging`` lines of
  the logger ``densflow`` are the progress (the command line sends them to stderr).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .errors import InputError

__all__ = [
    "collate_images",
    "first_images",
    "in_notebook",
    "log_to_stderr",
    "progress_bar",
    "resolve_device",
]


def resolve_device(
    name: str | torch.device | None = "auto", option: str = "device"
) -> torch.device:
    """``"auto"`` (or None): CUDA when available, else the CPU; any other name as torch reads it.

    A device that is not one, or a CUDA or MPS device that this machine does not have, raises
    ``ValueError`` (naming ``option``, e.g. ``"--device"``) at once, rather than at the first
    tensor moved there.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            f"{option} {name!r} is not a device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(
                f"{option} {str(name)!r} asked for, but CUDA is not available on this machine; use "
                "--device cpu (or auto)"
            )
        if device.index is not None and device.index >= count:
            raise InputError(
                f"{option} {str(name)!r} asked for, but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1}); use one of them or --device auto"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{option} {str(name)!r}: MPS is not available here; use 'cpu' or 'auto'")
    return device


def collate_images(items: Sequence[Tensor | tuple | list]) -> Tensor:
    """Stack dataset items into a uint8 batch ``(B, 3, H, W)``; an item may be an image or a tuple
    whose first entry is the image (``TensorDataset``, labelled datasets)."""
    return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def first_images(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of ``dataset`` (all of them when ``limit`` is None or larger)."""
    if limit is not None and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, or papermill executing one)."""
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    ip = get_ipython() if get_ipython is not None else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress_bar(
    total: int, *, desc: str, unit: str, initial: int = 0, enabled: bool | None = None
) -> Any:
    """A progress bar over ``total`` units. ``enabled=None`` shows it on a terminal and in a
    notebook, and leaves it out elsewhere, where log lines report the progress instead.

    Refreshes are sparse (30 s) where every refresh is stored, as in a text bar of a notebook run
    by papermill: a paper-size run lasts days.
    """
    terminal = sys.stderr.isatty()
    notebook = in_notebook()
    if enabled is None:
        enabled = terminal or notebook
    if notebook:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    widget = tqdm.__module__ == "tqdm.notebook"
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.5 if terminal or widget else 30.0,
        disable=not enabled,
    )


@contextlib.contextmanager
def log_to_stderr() -> Iterator[None]:
    """Show the ``densflow`` logger's lines (level INFO: training log points, evaluations,
    checkpoints) on stderr for the duration; on a terminal above the progress bar. For the
    command line and notebooks; a library caller configures ``logging`` as it likes instead."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("densflow")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm([logger]) if sys.stderr.isatty() else contextlib.nullcontext():
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
