"""Load the authors' released DenseFlow checkpoints (github.com/matejgrcic/DenseFlow).

An official run folder holds ``args.pickle`` (the training flags) and ``check/checkpoint.pt``
(a dict whose ``model`` entry is the state dict, with a ``module.`` prefix on every key when
trained with DataParallel). This module maps every official key to its densflow name, checks
every shape, and says precisely what does not fit.

Official buffers with no densflow counterpart are constants; they are checked, then dropped:
``transforms.0.ldj_per_dim`` (−ln 256, stored rounded to float32 — densflow uses the exact value,
which raises ln p by 1.5e-8 nats per dimension), the −0.5 shift and unit scale of
``transforms.1``, the sigmoid temperature (1) of the dequantization flow and the placeholder
buffers of the transitions.
"""

from __future__ import annotations

import argparse
import copyreg
import math
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..config import DenseFlowConfig
from ..data import DATASETS, AllowList, restricted_unpickle
from ..dense_block import DenseBlock
from ..model import DenseFlow
from ..utils.errors import first_line
from .checkpoint import FORMAT, CheckpointError, describe_keys, read_torch_file

__all__ = [
    "load_official",
    "model_from_official",
    "convert_state_dict",
    "official_key_map",
    "config_from_state_dict",
    "read_official_args",
    "locate_official",
    "IMAGE_SIZES",
]

IMAGE_SIZES = {d.official_name: d.image_size for d in DATASETS.values() if d.official_name}
"""Image size of each dataset name the official code accepts in ``args.dataset``."""

_CONSTANTS: list[tuple[re.Pattern[str], float | None]] = [
    (re.compile(r"transforms\.0\.ldj_per_dim"), -math.log(256.0)),
    (re.compile(r"transforms\.1\._shift"), -0.5),
    (re.compile(r"transforms\.1\._scale"), 1.0),
    (re.compile(r"transforms\.0\.encoder\.transforms\.\d+\.temperature"), 1.0),
    (re.compile(r"transforms\.\d+\.dist\.buffer"), None),  # a dtype/device placeholder
]


# ----------------------------------------------------------------------------- key map
def _dense_block(ours: str, theirs: str, block: DenseBlock) -> Iterator[tuple[str, str]]:
    for k in range(block.depth):
        for p in ("weight", "bias"):
            yield f"{ours}layers.{k}.conv_in.{p}", f"{theirs}{k}.nn.0.{p}"
            yield f"{ours}layers.{k}.conv_out.{p}", f"{theirs}{k}.nn.2.{p}"
    for p in ("weight", "bias"):
        yield f"{ours}gate.conv.{p}", f"{theirs}{block.depth}.conv.{p}"


def _conv(ours: str, theirs: str, bias: bool = True) -> Iterator[tuple[str, str]]:
    yield f"{ours}.weight", f"{theirs}.weight"
    if bias:
        yield f"{ours}.bias", f"{theirs}.bias"


def _dequantization(deq) -> Iterator[tuple[str, str]]:
    ours, theirs = "dequantization.", "transforms.0.encoder."
    yield f"{ours}base_loc", f"{theirs}base_dist.loc"
    yield f"{ours}base_log_scale", f"{theirs}base_dist.log_scale"
    for s in range(len(deq.convs)):
        yield f"{ours}convs.{s}.weight", f"{theirs}transforms.{2 * s}.weight"
    for s, coupling in enumerate(deq.couplings):
        net_ours, net_theirs = (
            f"{ours}couplings.{s}.net.",
            f"{theirs}transforms.{2 * s + 1}.coupling_net.0.transform.",
        )
        yield from _conv(f"{net_ours}0", f"{net_theirs}0")
        yield from _dense_block(f"{net_ours}1.", f"{net_theirs}1.dense.", coupling.net[1])
        yield from _conv(f"{net_ours}2", f"{net_theirs}2")
    ctx = deq.context
    yield from _dense_block(f"{ours}context.dense_in.", f"{theirs}context_init.1.", ctx.dense_in)
    yield from _conv(f"{ours}context.down", f"{theirs}context_init.2")
    yield from _dense_block(f"{ours}context.dense_out.", f"{theirs}context_init.3.", ctx.dense_out)


def _glow_module(ours: str, theirs: str, module) -> Iterator[tuple[str, str]]:
    for p in ("shift", "log_scale", "initialized"):
        yield f"{ours}actnorm.{p}", f"{theirs}transforms.0.{p}"
    yield f"{ours}conv1x1.weight", f"{theirs}transforms.1.weight"
    net_ours, net_theirs = (
        f"{ours}coupling.net.",
        f"{theirs}transforms.2.coupling_net.0.dn.transform.",
    )
    yield from _conv(f"{net_ours}in_conv", f"{net_theirs}0")
    yield from _dense_block(f"{net_ours}dense.", f"{net_theirs}1.dense.", module.coupling.net.dense)
    yield from _conv(f"{net_ours}attention.qkv", f"{net_theirs}1.mha.qkv")
    yield from _conv(f"{net_ours}attention.out", f"{net_theirs}1.mha.out_transform")
    for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        yield f"{net_ours}mix_norm.{p}", f"{net_theirs}1.mix_conv.0.{p}"
    yield from _conv(f"{net_ours}mix_conv", f"{net_theirs}1.mix_conv.2", bias=False)
    yield from _conv(f"{net_ours}out_conv", f"{net_theirs}2")


def official_key_map(model: DenseFlow) -> dict[str, str]:
    """densflow state-dict key → official key, for every entry of ``model.state_dict()``.

    Only models with the paper's plain 1×1 convolutions have official counterparts.
    """
    if model.config.conv1x1 != "plain":
        raise CheckpointError(
            "official checkpoints use plain 1×1 convolutions; build with conv1x1='plain'"
        )
    pairs = [("prior.loc", "base_dist.loc"), ("prior.log_scale", "base_dist.log_scale")]
    pairs += _dequantization(model.dequantization)
    for b, block in enumerate(model.blocks):
        theirs = f"transforms.{3 + 2 * b}."
        for k in range(len(block.cross_unit)):
            for layer in ("0", "2"):
                pairs += _conv(
                    f"blocks.{b}.cross_unit.{k}.g.{layer}",
                    f"{theirs}noise_params.{k}.transformation.{layer}",
                )
        for i, unit in enumerate(block.units):
            for j, module in enumerate(unit):
                pairs += _glow_module(
                    f"blocks.{b}.units.{i}.{j}.", f"{theirs}blocks.{i}.transforms.{j}.", module
                )
    return dict(pairs)


# ----------------------------------------------------------------------------- config
def _count(keys: set[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.fullmatch(k))}
    return max(found) + 1 if found else 0


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], image_size: int = 32, **overrides
) -> DenseFlowConfig:
    """Infer the architecture of an official state dict from its keys and shapes.

    The image size is not recorded in the weights (no shape depends on it): pass it, or read it
    from ``args.pickle`` with :func:`read_official_args`.
    """
    keys, sd = set(state_dict), state_dict
    try:
        num_blocks = _count(keys, r"transforms\.(\d+)\.blocks\..*")
        num_blocks = (num_blocks - 3 + 1) // 2
        blocks = [f"transforms.{3 + 2 * b}." for b in range(num_blocks)]
        unit_counts = tuple(_count(keys, re.escape(t) + r"blocks\.(\d+)\..*") for t in blocks)
        layer_counts = tuple(
            _count(keys, re.escape(t) + r"blocks\.0\.transforms\.(\d+)\..*") for t in blocks
        )
        net = "blocks.0.transforms.0.transforms.2.coupling_net.0.dn.transform."
        mids = tuple(int(sd[f"{t}{net}0.weight"].shape[0]) for t in blocks)
        growth = [
            int(sd[f"{t}noise_params.0.transformation.2.weight"].shape[0]) // 2
            for t in blocks
            if f"{t}noise_params.0.transformation.2.weight" in sd
        ]
        net0 = f"{blocks[0]}{net}1.dense."
        enc = "transforms.0.encoder."
        deq_net = f"{enc}transforms.1.coupling_net.0.transform."
        ctx = f"{enc}context_init."
        context_depth = _count(keys, re.escape(f"{ctx}1.") + r"(\d+)\.nn\.0\.weight")
        inferred = dict(
            image_size=image_size,
            block_config=unit_counts,
            layers_config=layer_counts,
            mid_channels=mids,
            growth_rate=growth[0] if growth else DenseFlowConfig.growth_rate,
            coupling_dense_depth=_count(keys, re.escape(net0) + r"(\d+)\.nn\.0\.weight"),
            coupling_dense_growth=int(sd[f"{net0}0.nn.2.weight"].shape[0]),
            deq_num_steps=_count(keys, re.escape(f"{enc}transforms.") + r"(\d+)\.coupling_net\..*")
            // 2,
            deq_context_channels=int(sd[f"{ctx}3.{context_depth}.conv.weight"].shape[0]) // 3,
            deq_mid_channels=int(sd[f"{deq_net}0.weight"].shape[0]),
            deq_depth=_count(keys, re.escape(f"{deq_net}1.dense.") + r"(\d+)\.nn\.0\.weight"),
            deq_growth=int(sd[f"{deq_net}1.dense.0.nn.2.weight"].shape[0]),
            deq_context_depth=context_depth,
            deq_context_growth=int(sd[f"{ctx}1.0.nn.2.weight"].shape[0]),
        )
    except (KeyError, IndexError) as err:
        raise CheckpointError(
            f"this does not look like an official DenseFlow state dict: expected key {err} is "
            "missing"
        ) from err
    inferred.update(overrides)
    try:
        return DenseFlowConfig(**inferred)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the weights describe no valid DenseFlow: {err}") from err


_ARGS_PICKLE = AllowList.of(
    "argparse.Namespace and plain values",
    argparse.Namespace,
    copyreg._reconstructor,
    object,
    set,
    frozenset,
    slice,
)


def read_official_args(path: str | os.PathLike) -> argparse.Namespace:
    """Read an official ``args.pickle`` safely."""
    try:
        args = restricted_unpickle(path, _ARGS_PICKLE)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"cannot read official args file {path}: {first_line(err)}") from err
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(
            f"{path} holds a {type(args).__name__}, expected an argparse.Namespace"
        )
    return args


def _config_from_args(args: argparse.Namespace) -> dict:
    dataset = getattr(args, "dataset", None)
    if dataset not in IMAGE_SIZES:
        raise CheckpointError(
            f"args.dataset is {dataset!r}; known datasets are {sorted(IMAGE_SIZES)} (pass "
            "image_size)"
        )
    fields = dict(image_size=IMAGE_SIZES[dataset])
    for ours, theirs in (
        ("block_config", "block_conf"),
        ("layers_config", "layers_conf"),
        ("mid_channels", "layer_mid_chnls"),
        ("growth_rate", "growth_rate"),
        ("num_bits", "num_bits"),
    ):
        if hasattr(args, theirs):
            fields[ours] = getattr(args, theirs)
    return fields


# ----------------------------------------------------------------------------- conversion
def _strip_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _check_constant(key: str, value: Tensor) -> bool:
    for pattern, expected in _CONSTANTS:
        if pattern.fullmatch(key):
            if expected is not None and not math.isclose(float(value), expected, rel_tol=1e-6):
                raise CheckpointError(
                    f"official buffer {key} is {float(value)}, expected {expected}: this "
                    "checkpoint "
                    "was made with a modified model that densflow does not reproduce"
                )
            return True
    return False


def convert_state_dict(official: Mapping[str, Tensor], model: DenseFlow) -> dict[str, Tensor]:
    """Rename an official state dict to ``model``'s keys, checking every key and shape."""
    official = _strip_prefix(official)
    key_map = official_key_map(model)
    ours = model.state_dict()
    wanted = {theirs: mine for mine, theirs in key_map.items()}
    missing = sorted(t for t in wanted if t not in official)
    unexpected = sorted(
        k for k in official if k not in wanted and not _check_constant(k, official[k])
    )
    misshaped = sorted(
        f"{t}: checkpoint {tuple(official[t].shape)}, model {tuple(ours[m].shape)}"
        for t, m in wanted.items()
        if t in official and official[t].shape != ours[m].shape
    )
    wrong = describe_keys(
        (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
    )
    if wrong:
        raise CheckpointError(
            f"the official checkpoint does not fit the model its args.pickle and weights describe "
            f"({wrong}); check that args.pickle belongs to this checkpoint, or pass the right "
            "image_size"
        )
    return {mine: official[theirs] for mine, theirs in key_map.items()}


def locate_official(path: Path) -> tuple[Path, Path | None]:
    """Checkpoint file and (if present) args.pickle for a run folder or a checkpoint file."""
    if path.is_dir():
        candidates = [path / "check" / "checkpoint.pt", path / "checkpoint.pt"]
        ckpt = next((c for c in candidates if c.is_file()), None)
        if ckpt is None:
            raise CheckpointError(
                f"{path} is a folder without check/checkpoint.pt: an official run folder holds "
                "args.pickle and check/checkpoint.pt (found: "
                f"{sorted(p.name for p in path.iterdir())[:10]})"
            )
    elif path.is_file():
        ckpt = path
    else:
        raise CheckpointError(f"no official checkpoint at {path}")
    args = next(
        (
            a
            for a in (ckpt.parent.parent / "args.pickle", ckpt.parent / "args.pickle")
            if a.is_file()
        ),
        None,
    )
    return ckpt, args


def load_official(
    checkpoint_path: str | os.PathLike,
    args_path: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> DenseFlow:
    """Build a :class:`~densflow.DenseFlow` holding the weights of an official checkpoint.

    Arguments:
        checkpoint_path: the run folder (with ``check/checkpoint.pt``), or the ``.pt`` file. A raw
            state dict saved on its own is accepted too.
        args_path: the run's ``args.pickle``; found beside the ``check/`` folder when omitted.
            It gives the image size (from ``dataset``) and is cross-checked with the weights.
        image_size: overrides the image size (needed when there is no ``args.pickle``; default 32).
        trust_checkpoint: allow full unpickling when the file cannot be loaded with
            ``weights_only=True``. Only for files from a source you trust.

    Returns the model in eval mode, in float32, on ``map_location``.
    """
    ckpt_file, found_args = locate_official(Path(checkpoint_path))
    raw = read_torch_file(
        ckpt_file,
        trusted=trust_checkpoint,
        trust_hint="If it comes from a source you trust, pass trust_checkpoint=True (densflow "
        "convert --trust-checkpoint)",
    )
    args_file = Path(args_path) if args_path is not None else found_args
    return model_from_official(raw, ckpt_file, args_file, image_size).to(map_location)


def model_from_official(
    raw: object, ckpt_file: Path, args_file: Path | None, image_size: int | None = None
) -> DenseFlow:
    """The model of an official checkpoint's content ``raw`` (read from ``ckpt_file``), with the
    run's ``args_file`` when there is one; see :func:`load_official`."""
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        raise CheckpointError(
            f"{ckpt_file} is a densflow checkpoint already, not an official one: load it with "
            "densflow.io.load (eval and sample read it as it is)"
        )
    state_dict = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(
            f"{ckpt_file} holds no state dict (expected a dict with a 'model' entry)"
        )
    state_dict = _strip_prefix(state_dict)
    config = config_from_state_dict(state_dict, image_size or 32)
    if args_file is not None:
        fields = _config_from_args(read_official_args(args_file))
        if image_size is not None:
            fields["image_size"] = image_size
        try:
            config = DenseFlowConfig(**{**config.to_dict(), **fields})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{args_file} describes no valid model: {err}") from err
    model = DenseFlow(config)
    model.load_state_dict(convert_state_dict(state_dict, model))
    return model.eval()
