"""Storage: everything densflow reads from or writes to disk besides datasets.

* :mod:`~densflow.io.checkpoint` — densflow's model and training checkpoints;
* :mod:`~densflow.io.official` — the authors' run folders, read and converted;
* :mod:`~densflow.io.pretrained` — model directories (``config.json`` + ``model.safetensors``);
* :mod:`~densflow.io.safetensors_codec` — the safetensors format;
* :mod:`~densflow.io.weights` — the authors' released weights, downloaded and unpacked;
* :mod:`~densflow.io.archive` — safe unpacking of zip and tar archives.
"""
