"""The `safetensors <https://huggingface.co/docs/safetensors>`_ format in plain Python over
``torch``: a little-endian u64 header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes (no pickle, nothing that can run code).

Files written here load with ``safetensors.torch.load_file`` and the reverse, so a model directory
(:mod:`densflow.io.pretrained`) loads with no compiled package beside torch.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as folder:
...     save_safetensors({"w": torch.arange(3.0)}, f"{folder}/t.safetensors", {"format": "pt"})
...     load_safetensors(f"{folder}/t.safetensors")
({'w': tensor([0., 1., 2.])}, {'format': 'pt'})
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import CheckpointError

__all__ = ["save_safetensors", "load_safetensors"]

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # the safetensors library's own bound on the JSON header


def _little_endian() -> None:
    if sys.byteorder != "little":
        raise CheckpointError("safetensors files are little-endian; this machine is big-endian")


def save_safetensors(
    tensors: Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format (no pickle, no code).

    Tensors are laid out largest item size first, so that every tensor starts at a multiple of
    its item size, and the header is padded with spaces to a multiple of 8 bytes, as the
    safetensors library does.
    """
    _little_endian()
    items = []
    for name, t in tensors.items():
        if t.dtype not in _CODES:
            raise ValueError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")
        items.append((name, t.detach().to("cpu").contiguous()))
    items.sort(key=lambda kv: (-kv[1].element_size(), kv[0]))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, t in items:
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in items:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the ``__metadata__`` of a safetensors file, every byte range checked."""
    _little_endian()
    path = Path(path)

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid safetensors file: {why}")

    try:
        data = bytearray(path.read_bytes())
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if len(data) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise bad(f"header length {n} exceeds the file")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as err:
        raise bad(f"header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body, tensors, spans = 8 + n, {}, []
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise bad(f"entry {name!r} lacks a known dtype, a shape or data_offsets") from err
        itemsize = torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or end - begin != math.prod(shape) * itemsize or begin < 0:
            raise bad(f"entry {name!r}: shape {shape} does not fill bytes [{begin}, {end})")
        if body + end > len(data):
            raise bad(f"entry {name!r} ends past the end of the file (truncated download?)")
        spans.append((begin, end))
        if math.prod(shape) == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=body + begin)
            tensors[name] = flat.view(dtype).reshape(shape)
    spans.sort()
    covered = 0
    for begin, end in spans:  # the byte ranges tile the body: no overlap, no gap
        if begin != covered:
            raise bad(f"tensor byte ranges overlap or leave a gap at byte {covered}")
        covered = end
    if body + covered != len(data):
        raise bad(f"{len(data) - body - covered} bytes after the last tensor")
    return tensors, {str(k): str(v) for k, v in metadata.items()}
