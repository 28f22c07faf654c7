"""densflow: DenseFlow ("Densely connected normalizing flows", Grcić, Grubišić & Šegvić,
NeurIPS 2021, arXiv:2106.04627) from first principles.

Layout (one paper part per module): :mod:`~densflow.dequantization`, :mod:`~densflow.glow`
(ActNorm, 1×1 conv, glow-like module), :mod:`~densflow.coupling`, :mod:`~densflow.dense_block`,
:mod:`~densflow.attention`, :mod:`~densflow.cross_unit`, :mod:`~densflow.invertible_dense_block`,
:mod:`~densflow.multiscale`, :mod:`~densflow.prior`, :mod:`~densflow.base` (the contract of every
step), :mod:`~densflow.config`, :mod:`~densflow.model`, :mod:`~densflow.bounds`; speed as
transforms of a built model in :mod:`~densflow.performance`; :mod:`~densflow.io.official`,
:mod:`~densflow.data`, :mod:`~densflow.training`, :mod:`~densflow.evaluation`,
:mod:`~densflow.cli`.

The training loop and the evaluation are ``densflow.training.train`` and
``densflow.evaluation.evaluate`` (not re-exported here, so that the module names stay the modules).
A model is loaded, whatever names it, with ``DenseFlow.from_pretrained`` (:func:`densflow.io.load`).
"""

from . import data
from .bounds import bits_per_dim, importance_weighted_bound
from .config import MODEL_SIZES, DenseFlowConfig
from .data import DatasetError, augmentation_for, check_dataset, image_shape, load_dataset
from .evaluation import save_sample_grid
from .io import CheckpointError, save_model
from .io import hub as _hub
from .io import pretrained as _pretrained
from .io import resolve as _resolve
from .model import DenseFlow
from .noise import fixed_noise, make_generator
from .training import TrainConfig, train_preset
from .utils.provenance import version as _version

__version__ = _version()

# The Hugging Face names on the model class. Storage (densflow.io) imports the model, so the model
# cannot define them: they are attached here, where both are imported.
DenseFlow.from_pretrained = classmethod(_resolve.from_pretrained)
DenseFlow.save_pretrained = _pretrained.save_pretrained
DenseFlow.push_to_hub = _hub.push_to_hub

__all__ = [
    "DenseFlow",
    "DenseFlowConfig",
    "MODEL_SIZES",
    "bits_per_dim",
    "importance_weighted_bound",
    "fixed_noise",
    "make_generator",
    "save_model",
    "CheckpointError",
    "data",
    "load_dataset",
    "check_dataset",
    "image_shape",
    "augmentation_for",
    "DatasetError",
    "TrainConfig",
    "train_preset",
    "save_sample_grid",
]
