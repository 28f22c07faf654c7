"""Storage: everything densflow reads from or writes to disk besides datasets.

* :mod:`~densflow.io.resolve` — one way to name a model: :func:`load` (also
  ``DenseFlow.from_pretrained``) takes a model directory, a checkpoint, a run folder, an official
  run folder, a cached name or a Hugging Face Hub repo id;
* :mod:`~densflow.io.checkpoint` — densflow's checkpoint files (``.pt``);
* :mod:`~densflow.io.official` — the authors' run folders, read and converted;
* :mod:`~densflow.io.pretrained` — model directories (``config.json`` + ``model.safetensors``);
* :mod:`~densflow.io.hub` — model directories on the Hugging Face Hub;
* :mod:`~densflow.io.weights` — the authors' released weights, downloaded and unpacked;
* :mod:`~densflow.io.archive` — safe unpacking of zip and tar archives;
* :mod:`~densflow.io.files` — atomic writes; :mod:`~densflow.io.locks` — one writer per folder;
  :mod:`~densflow.io.outputs` — no output on an input.

The model never imports this package: ``densflow`` attaches ``from_pretrained``,
``save_pretrained`` and ``push_to_hub`` to :class:`~densflow.model.DenseFlow` when it is imported.
"""

from .checkpoint import CheckpointError, save_model
from .files import WriteError, atomic_write
from .hub import push_to_hub
from .pretrained import save_pretrained
from .resolve import LoadedModel, ModelSource, from_pretrained, load, locate

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "ModelSource",
    "WriteError",
    "atomic_write",
    "from_pretrained",
    "load",
    "locate",
    "push_to_hub",
    "save_model",
    "save_pretrained",
]
