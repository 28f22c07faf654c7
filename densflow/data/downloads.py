"""Fetching a dataset's files, by the ``download`` function of its registry entry.

A download may need a package beyond the base install (CelebA's Google Drive files need ``gdown``,
from the ``download`` extra); :func:`require` checks for it first and names the install command.
Every failure ends in one :class:`~densflow.data.DatasetNotFoundError` that gives the manual way:
the entry's ``source``, never the function that just failed.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from .errors import DatasetNotFoundError, few
from .registry import dataset_info

__all__ = ["MissingDependencyError", "download", "require"]


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message names the command that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports the optional package ``module``, or says how to install it.

    Arguments:
        module: the import name (``"gdown"``).
        extra: densflow's optional dependency group that provides it (``"download"``).
        purpose: what needs it, for the message (``"downloading celeba"``).

    Raises:
        MissingDependencyError: the package cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the {module!r} package, which is not installed: run "
            f'pip install -e ".[{extra}]" in the densflow folder (or pip install {module})'
        ) from err


def download(name: str, root: str | os.PathLike[str]) -> Path:
    """Downloads dataset ``name`` into ``root`` and returns the ``data_dir`` to use.

    CIFAR-10 and CelebA are fetched with torchvision's downloaders, which check every file's MD5
    (CelebA needs ``gdown``: ``pip install -e ".[download]"``; Google Drive may refuse it when
    busy).
    ImageNet32/64 cannot be downloaded automatically: image-net.org requires a login. ``photos``
    needs nothing and ``root`` is returned as it is.

    Raises:
        DatasetError: the dataset needs a manual download, or the download failed (the message
            says how to get the files by hand).
    """
    info = dataset_info(name)
    root = Path(root).expanduser()
    if not info.files:
        return root
    if info.download is None:
        raise DatasetNotFoundError(
            f"{name} cannot be downloaded automatically.\n  get it: "
            f"{info.source}\n  then: {few(info.files)}; {info.layout}"
        )
    try:
        if info.download_needs is not None:
            require(*info.download_needs, purpose=f"downloading {name}")
        info.download(root)
    except Exception as err:  # network, quota, missing package, bad archive: all end the same way
        raise DatasetNotFoundError(
            f"{name}: download into {root} failed ({type(err).__name__}: {err}).\n"
            f"  get it by hand: {info.source}\n  expected: {few(info.files)}; {info.layout}"
        ) from err
    return root
