"""densflow checkpoint files (``.pt``): the one place that writes and reads them, atomically and
validated.

A densflow checkpoint is a ``torch.save``d dict of tensors and plain values only, so that it loads
with ``weights_only=True``: ``format`` (``"densflow"``), ``version``, ``config`` (a
:class:`~densflow.model.DenseFlowConfig` as a plain dict), ``model`` (the state dict) and
``provenance`` (:func:`~densflow.utils.provenance.provenance`: the code that wrote it). A
training run adds its own entries (:mod:`densflow.training.state`); :func:`read_checkpoint`
checks the ones every checkpoint has, and :func:`model_from_checkpoint` builds the model.

State-dict keys of earlier densflow versions are read under today's names
(:data:`EARLIER_KEYS`), so that no checkpoint a user has stops loading when a module is renamed.

Every failure to read a file names the file and the cause in one line. A file that needs more
than tensors and plain values to load (``weights_only`` refuses it) is described by the globals
its pickle would call (:func:`pickle_globals`, read without running anything): loading it in full
is offered only when every one of them is a plain data type, never for one that calls a system
function.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DenseFlowConfig
from ..model import DenseFlow
from ..utils.errors import InputError, first_line
from ..utils.provenance import provenance
from .files import atomic_save

__all__ = [
    "CheckpointError",
    "EARLIER_KEYS",
    "FORMAT",
    "VERSION",
    "check_torch_file",
    "checkpoint_dict",
    "config_from",
    "describe_keys",
    "load_weights",
    "model_from_checkpoint",
    "nonfinite_entries",
    "pickle_globals",
    "read_checkpoint",
    "read_torch_file",
    "save_model",
    "validated",
]

FORMAT, VERSION = "densflow", 1

# Globals a checkpoint of tensors and plain values may need beyond what weights_only allows: with
# nothing else, loading in full rebuilds data and runs no other code.
_DATA_MODULES = ("torch", "numpy", "collections", "argparse", "_codecs", "copyreg")
_DATA_BUILTINS = {"set", "frozenset", "slice", "dict", "list", "tuple", "object", "int", "float",
                  "complex", "bool", "str", "bytes", "bytearray", "range"}  # fmt: skip


EARLIER_KEYS = (
    # The input augmentation (``augmentation="input"``, the ablation) was a cross-unit coupling in
    # front of a one-unit stage; it is now an InputAugmentedBlock with its own names.
    (re.compile(r"^(blocks\.\d+)\.cross_unit\.0\."), r"\1.augmentation."),
    (re.compile(r"^(blocks\.\d+)\.units\.1\."), r"\1.unit."),
)
"""(pattern, replacement) for state-dict keys that earlier versions wrote: a key the model does not
have is renamed by the first that matches, where the model has the new key and the state has
not."""


class CheckpointError(InputError):
    """A checkpoint or model file that is missing, unreadable, or does not fit the model."""


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, t in state.items()
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def checkpoint_dict(model: DenseFlow, **extra: Any) -> dict[str, Any]:
    """The dict a checkpoint of ``model`` holds: the entries every checkpoint has, and ``extra``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "provenance": provenance(),
        **extra,
    }


def save_model(model: DenseFlow, path: str | os.PathLike, **extra: Any) -> None:
    """Save ``model`` (config + state dict, plus any ``extra`` entries) atomically."""
    atomic_save(checkpoint_dict(model, **extra), path)


# ----------------------------------------------------------------------------- reading torch files
def check_torch_file(path: str | os.PathLike) -> None:
    """Refuse a file that ``torch.save`` cannot have written, from its first bytes: a zip
    archive (or, before torch 1.6, a pickle stream of protocol 2 or later)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is not a checkpoint (neither a zip archive nor a pickle, which torch.save "
            "writes); expected a densflow checkpoint (.pt), a model directory or an official "
            "DenseFlow run folder: check the path"
        )


def _pickle_streams(path: Path) -> list[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]  # a legacy torch file: several pickles in a row


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
            "BINSTRING", "STRING"}  # fmt: skip
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_NO_PUSH = {"PROTO", "FRAME", "MEMOIZE", "STOP", *_MEMO_PUT}


def _globals_of(stream: io.BytesIO) -> list[str]:
    """The globals one pickle in ``stream`` imports. ``STACK_GLOBAL`` takes its module and name
    from the two values pushed last (strings, or strings fetched from the memo); when they are
    anything else, the global is ``"?"``: unknown, so never taken for plain data."""
    found: list[str] = []
    pushed: list[str | None] = []  # the values pushed so far: a string, or None for any other
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(stream):  # up to this pickle's STOP
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        if name == "STACK_GLOBAL":
            module, attr = pushed[-2:] if len(pushed) >= 2 else [None, None]
            found.append(f"{module}.{attr}" if module and attr else "?")
            pushed[-2:] = [None]
        elif name in _MEMO_PUT or name == "MEMOIZE":
            memo[arg if name != "MEMOIZE" else len(memo)] = pushed[-1] if pushed else None
        elif name in _MEMO_GET:
            pushed.append(memo.get(arg))
        elif name in _STRINGS:
            pushed.append(str(arg))
        elif name not in _NO_PUSH:
            pushed.append(None)
    return found


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """The ``module.name`` globals the pickle(s) of a torch file would import, read with
    :mod:`pickletools` without running anything; ``"?"`` for one it cannot tell."""
    found: list[str] = []
    for data in _pickle_streams(Path(path)):
        stream = io.BytesIO(data)
        # torch.load unpickles one data.pkl of a zip file, or the first five pickles of a legacy
        # file (magic number, protocol, system info, the object, the storage keys; raw bytes
        # follow): exactly what is read here.
        for k in range(5):
            if stream.tell() >= len(data):
                break
            try:
                found += _globals_of(stream)
            except (ValueError, TypeError, EOFError):  # not a pickle: nothing torch would run
                found += ["?"] if k == 0 else []
                break
    return sorted(set(found))


def _is_data(name: str) -> bool:
    module, _, attribute = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attribute in _DATA_BUILTINS
    return module.split(".")[0] in _DATA_MODULES


def _refused_pickle(path: Path, err: BaseException, trust_hint: str) -> CheckpointError:
    names = pickle_globals(path)
    code = [n if n != "?" else "a global it hides" for n in names if not _is_data(n)]
    if code:
        shown = ", ".join(code[:4]) + (f" and {len(code) - 4} more" if len(code) > 4 else "")
        return CheckpointError(
            f"{path} is not a checkpoint densflow loads: loading it would call {shown}, code "
            "beyond tensors and plain values; densflow never runs it. Use a checkpoint that "
            "holds a state dict"
        )
    shown = ", ".join(names[:4]) or first_line(err)
    return CheckpointError(
        f"{path} holds objects beyond tensors and plain values ({shown}), which weights_only "
        f"loading refuses. {trust_hint}"
    )


def read_torch_file(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    trusted: bool = False,
    trust_hint: str = "If it comes from a source you trust, convert it with "
    "densflow convert --trust-checkpoint",
) -> Any:
    """``torch.load`` of ``path`` with ``weights_only`` (in full when ``trusted``), every failure
    one :class:`CheckpointError` line. ``trust_hint``: the advice for a file whose pickle needs
    only data types beyond those ``weights_only`` allows."""
    path = Path(path)
    check_torch_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if trusted:
            raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err
        raise _refused_pickle(path, err, trust_hint) from err
    except MemoryError:
        raise
    except Exception as err:  # torch raises many types for torn or foreign files
        raise CheckpointError(
            f"cannot read {path}: {first_line(err)}. The file is damaged (a torn copy?) or not "
            "a checkpoint"
        ) from err


# ----------------------------------------------------------------------------- densflow checkpoints
def _validate(ckpt: Any, path: Path) -> dict:
    """``ckpt`` if it is a densflow checkpoint dict this version reads, else why not."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = (
            " It looks like an official DenseFlow checkpoint: convert it with densflow convert"
            if (isinstance(ckpt, dict) and "model" in ckpt and "current_epoch" in ckpt)
            else ""
        )
        raise CheckpointError(
            f"{path} is not a densflow checkpoint (no format='{FORMAT}' entry).{hint}"
        )
    if ckpt.get("version") != VERSION:
        newer = isinstance(ckpt.get("version"), int) and ckpt["version"] > VERSION
        raise CheckpointError(
            f"{path} has densflow checkpoint version {ckpt.get('version')!r}, this densflow "
            f"reads version {VERSION}" + ("; update densflow to read it" if newer else "")
        )
    for key, kind in (("config", "a dict of DenseFlowConfig fields"), ("model", "a state dict")):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no '{key}' entry")
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(
                f"{path}: its '{key}' entry is a {type(ckpt[key]).__name__}, expected {kind}; "
                "the file is damaged or was not written by densflow"
            )
    return ckpt


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a densflow checkpoint dict (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return _validate(read_torch_file(path, map_location), path)


def validated(ckpt: Any, path: str | os.PathLike) -> dict:
    """``ckpt`` (already read from ``path``) if it is a densflow checkpoint this version reads."""
    return _validate(ckpt, Path(path))


def describe_keys(groups: Iterable[tuple[str, list[str]]], k: int = 3) -> str:
    """``"missing: a, b, c and 2 more; unexpected: d"``: the non-empty groups of state-dict keys,
    a few of each, for a one-line message."""
    return "; ".join(
        f"{what}: {', '.join(keys[:k])}" + (f" and {len(keys) - k} more" if len(keys) > k else "")
        for what, keys in groups
        if keys
    )


def load_weights(module: nn.Module, state: Mapping[str, Any], source: str | os.PathLike) -> None:
    """``module.load_state_dict(state)``, with what does not fit said in one line: the missing,
    unexpected and mis-shaped entries, named (``source`` names where ``state`` came from). Keys
    of earlier versions are read under their new names (:data:`EARLIER_KEYS`)."""
    mine = module.state_dict()
    state = {_current_key(k, mine, state): v for k, v in state.items()}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} instead of {tuple(mine[k].shape)}"
        for k in set(mine) & set(state)
        if isinstance(state[k], Tensor) and state[k].shape != mine[k].shape
    )
    wrong = describe_keys(
        (("not tensors", not_tensors), ("missing", missing), ("unexpected", unexpected),
         ("mis-shaped", misshaped))
    )  # fmt: skip
    if wrong:
        raise CheckpointError(
            f"{source}: the weights do not fit the model of its config ({wrong}); the file is "
            "damaged or its config was edited"
        )
    module.load_state_dict(state)


def _current_key(key: str, mine: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """``key`` under the name the model has for it now, if it is an earlier version's name for
    it (and ``state`` does not hold that entry under its new name too)."""
    if key in mine:
        return key
    for pattern, replacement in EARLIER_KEYS:
        renamed = pattern.sub(replacement, key)
        if renamed != key and renamed in mine and renamed not in state:
            return renamed
    return key


def config_from(raw: Any, source: str | os.PathLike) -> DenseFlowConfig:
    """The :class:`DenseFlowConfig` of a checkpoint's or model directory's config entries."""
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{source}: its config is a {type(raw).__name__}, expected a dict of "
            "DenseFlowConfig fields"
        )
    try:
        return DenseFlowConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its config is no valid DenseFlowConfig: {err}") from err


def model_from_checkpoint(
    ckpt: dict, path: str | os.PathLike = "<checkpoint>", map_location: str | torch.device = "cpu"
) -> DenseFlow:
    """The model of a checkpoint dict already read by :func:`read_checkpoint`."""
    model = DenseFlow(config_from(ckpt["config"], path))
    load_weights(model, ckpt["model"], path)
    return model.to(map_location)
