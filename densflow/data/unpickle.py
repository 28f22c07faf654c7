"""Unpickling restricted to an allow-list of globals.

A pickle can run arbitrary code: loading one calls every global it names (``os.system`` included).
Data files (CIFAR-10, downsampled ImageNet) and the official code's ``args.pickle`` are pickles
from the internet, so each is read with :func:`restricted_unpickle`, which refuses every global
outside an :class:`AllowList`. Plain values (dicts, lists, str, bytes, numbers, None, tuples) need
no global and always pass.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["NUMPY_ARRAYS", "AllowList", "restricted_unpickle"]


@dataclass(frozen=True)
class AllowList:
    """The globals a pickle may name, and how an error describes them.

    Attributes:
        description: what the allowed globals build, in words (``"numpy arrays"``).
        globals: ``(module, name)`` as the pickle spells it → the object to use for it.

    Example:
        >>> import argparse
        >>> AllowList.of("argparse.Namespace", argparse.Namespace).globals
        {('argparse', 'Namespace'): <class 'argparse.Namespace'>}
    """

    description: str
    globals: Mapping[tuple[str, str], Any]

    @classmethod
    def of(cls, description: str, *objects: Any) -> AllowList:
        """Allows ``objects`` under the module and name they are defined with."""
        return cls(description, {(o.__module__, o.__qualname__): o for o in objects})


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


NUMPY_ARRAYS = AllowList(
    "plain values and numpy arrays",
    {
        # The ndarray reconstructor of protocols <= 4, _frombuffer of protocol 5, numpy scalars,
        # dtypes, and the bytes of Python 3 protocol 2, under numpy 1's and numpy 2's module names.
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
    },
)
"""What a pickled dict of numpy arrays needs (the data files of CIFAR-10 and ImageNet)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allow: AllowList) -> None:
        # Python 2 byte strings (CIFAR-10) decode as latin-1, the encoding numpy expects for
        # their array buffers; it maps every byte, so no pickle fails on it.
        super().__init__(file, encoding="latin1")
        self.allow = allow

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allow.globals:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in pickle: only {self.allow.description} are "
                "allowed (a pickle can run code)"
            )
        return self.allow.globals[module, name]


def restricted_unpickle(
    source: str | os.PathLike[str] | BinaryIO, allow: AllowList = NUMPY_ARRAYS
) -> Any:
    """Unpickles a file that may name only the globals of ``allow``.

    Arguments:
        source: a path, or a binary file open for reading.
        allow: the admitted globals; by default numpy's array and dtype reconstruction.

    Raises:
        pickle.UnpicklingError: the file names a forbidden global or is not a pickle.

    Example:
        >>> import io, pickle
        >>> restricted_unpickle(io.BytesIO(pickle.dumps({"a": [1, 2.5]})))
        {'a': [1, 2.5]}
        >>> restricted_unpickle(io.BytesIO(pickle.dumps(print)))
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: forbidden global builtins.print in pickle: only plain values and numpy arrays are allowed (a pickle can run code)
    """  # noqa: E501
    if hasattr(source, "read"):
        return _RestrictedUnpickler(source, allow).load()  # type: ignore[arg-type]
    with open(source, "rb") as f:  # type: ignore[arg-type]
        return _RestrictedUnpickler(f, allow).load()
