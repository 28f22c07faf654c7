"""The architecture of a DenseFlow, as a frozen dataclass: every default of the model lives here.

The defaults are DenseFlow-74-10, the configuration of every result in the paper (Sec. 2.2):
dense blocks of ``(6, 4, 1)`` units with ``(5, 6, 20)`` glow-like modules each
(6·5 + 4·6 + 20 = 74), growth rate 10, coupling networks of width 48 with a dense block of 7
layers of 64 channels and Nyström attention with 4 landmarks and 6 pseudo-inverse iterations.
The modules of :mod:`densflow` take these values from :data:`PAPER` when built on their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .utils.errors import InputError
from .utils.ranges import RANGES, check_range

__all__ = ["AUGMENTATIONS", "COUPLING_NETS", "MODEL_SIZES", "DenseFlowConfig", "PAPER"]

COUPLING_NETS = ("dense+attention", "dense", "attention")
"""Kinds of coupling network: the paper's fusion (Fig. 2), or one of its two branches."""
AUGMENTATIONS = ("incremental", "input", "none")
"""Where noise augments the flow: between units (the paper), once at the input, or nowhere."""


@dataclass(frozen=True)
class DenseFlowConfig:
    """Architecture of a DenseFlow. Defaults are DenseFlow-74-10 at 32×32 (the paper)."""

    image_size: int = 32
    """Height = width of the input images (32 for CIFAR-10/ImageNet32, 64 for ImageNet64/CelebA)."""
    block_config: tuple[int, ...] = (6, 4, 1)
    """Units per dense block."""
    layers_config: tuple[int, ...] = (5, 6, 20)
    """Glow-like modules per unit, per block."""
    mid_channels: tuple[int, ...] = (48, 48, 48)
    """Width of the coupling networks' branches, per block."""
    growth_rate: int = 10
    """Noise channels appended by each cross-unit coupling (eq. 6)."""
    coupling_dense_depth: int = 7
    """Layers of the dense block in each coupling network (Fig. 2)."""
    coupling_dense_growth: int = 64
    """Channels each of those layers appends."""
    num_landmarks: int = 4
    """Landmarks of the Nyström attention in each coupling network."""
    pinv_iterations: int = 6
    """Iterations of the attention's pseudo-inverse."""
    conv1x1: str = "plain"
    """``"plain"`` (the paper) or ``"lu"`` (LU-parameterised)."""
    deq_num_steps: int = 4
    """(1×1 conv, conditional coupling) steps of the dequantization flow q(u | x)."""
    deq_context_channels: int = 64
    """Width of the dequantization flow's context."""
    deq_mid_channels: int = 64
    """Width of its coupling networks and of its context network."""
    deq_depth: int = 4
    """Layers of the residual dense block in each of its coupling networks."""
    deq_growth: int = 64
    """Channels each of those layers appends."""
    deq_context_depth: int = 4
    """Layers of each dense block of the context network."""
    deq_context_growth: int = 16
    """Channels each of those layers appends."""
    num_bits: int = 8
    """Bits per sub-pixel of the modelled images (only 8 is supported)."""
    coupling_net: str = "dense+attention"
    """Branches of the coupling networks: ``"dense+attention"`` (the paper, Fig. 2), ``"dense"``
    or ``"attention"`` (ablations)."""
    augmentation: str = "incremental"
    """``"incremental"`` (the paper: cross-unit couplings between units, eqs. 6–9),
    ``"input"`` (as many latent noise dimensions, appended once before the first unit, as in
    VFlow and ANF) or ``"none"`` (no noise: a Glow-like flow of the same modules)."""

    def __post_init__(self) -> None:
        # Lists from JSON or argparse become tuples, so configs compare and hash by value.
        # Every count and width in its range (densflow.utils.ranges), before anything is built:
        # a width of 1e7 is refused here rather than found out by the allocator.
        for name in ("block_config", "layers_config", "mid_channels"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise InputError(f"{name} must be a sequence of integers, got {values!r}")
            values = tuple(_check(f"{name}[{i}]", v) for i, v in enumerate(values))
            object.__setattr__(self, name, values)
        if not RANGES["DenseFlowConfig"]["blocks"].holds(len(self.block_config)):
            raise InputError(
                f"block_config must have 1 to {RANGES['DenseFlowConfig']['blocks'].high} dense "
                f"blocks (each halves the image side), got {len(self.block_config)}"
            )
        for field in dataclasses.fields(self):
            if field.type in ("int", int) and field.name != "num_bits":  # checked below
                _check(field.name, getattr(self, field.name))
        n = len(self.block_config)
        if not (len(self.layers_config) == len(self.mid_channels) == n) or n == 0:
            raise InputError(
                "block_config, layers_config and mid_channels need one entry per dense block, got "
                f"{self.block_config}, {self.layers_config}, {self.mid_channels}"
            )
        if self.num_bits != 8:
            raise InputError(f"only 8-bit images are supported, got num_bits={self.num_bits}")
        if self.coupling_net not in COUPLING_NETS:
            raise InputError(
                f"coupling_net must be one of {COUPLING_NETS}, got {self.coupling_net!r}"
            )
        if self.augmentation not in AUGMENTATIONS:
            raise InputError(
                f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}"
            )
        if self.augmentation == "input" and self.growth_rate < 1:
            raise InputError(
                f"augmentation='input' needs growth_rate >= 1, got {self.growth_rate}; for a "
                "flow without noise use augmentation='none'"
            )
        if self.conv1x1 not in ("plain", "lu"):
            raise InputError(f"conv1x1 must be 'plain' or 'lu', got {self.conv1x1!r}")
        if self.image_size % 2**n:
            raise InputError(
                f"image_size {self.image_size} cannot be squeezed {n} times (one initial squeeze "
                f"and {n - 1} transitions): it must be divisible by {2**n}"
            )
        for b in range(n):
            side = self.image_size // 2 ** (b + 1)
            if (side * side) % self.num_landmarks:
                raise InputError(
                    f"dense block {b} works at {side}×{side}, whose {side * side} positions cannot "
                    f"be split into {self.num_landmarks} Nyström landmarks; use a larger "
                    "image_size, fewer blocks or another num_landmarks"
                )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @classmethod
    def paper(cls, image_size: int = 32, **overrides) -> DenseFlowConfig:
        """DenseFlow-74-10, the configuration of every result in the paper."""
        return cls(image_size=image_size, **overrides)

    @classmethod
    def small(cls, image_size: int = 32, **overrides) -> DenseFlowConfig:
        """A CPU-trainable DenseFlow with every component of the paper's (486,056 parameters)."""
        return cls(image_size=image_size, **{**_SMALL, **overrides})

    @classmethod
    def tiny(cls, image_size: int = 16, **overrides) -> DenseFlowConfig:
        """The smallest DenseFlow with every component, for tests (16×16 images)."""
        return cls(image_size=image_size, **{**_TINY, **overrides})

    @classmethod
    def preset(cls, name: str, image_size: int | None = None) -> DenseFlowConfig:
        """The preset ``name`` (one of :data:`MODEL_SIZES`), optionally at another image size."""
        if name not in MODEL_SIZES:
            raise InputError(f"unknown model size {name!r}; choose one of {list(MODEL_SIZES)}")
        factory = {"denseflow-74-10": cls.paper, "small": cls.small, "tiny": cls.tiny}[name]
        return factory() if image_size is None else factory(image_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DenseFlowConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown DenseFlowConfig fields {sorted(unknown)}")
        return cls(**d)


def _check(name: str, value: object) -> int:
    """``value`` in the range of the field ``name`` (which may carry an index), naming the field
    as a config.json or ``model_config`` key."""
    return check_range("DenseFlowConfig", name, value, option=name)


MODEL_SIZES = ("denseflow-74-10", "small", "tiny")
"""The model sizes (one kind of preset, docs/presets.md): the paper's DenseFlow-74-10
(:meth:`DenseFlowConfig.paper`), :meth:`~DenseFlowConfig.small` and
:meth:`~DenseFlowConfig.tiny`."""

PAPER = DenseFlowConfig()
"""DenseFlow-74-10 at 32×32: the source of every module's default."""

_SMALL = dict(
    block_config=(2, 2, 1),
    layers_config=(2, 2, 4),
    mid_channels=(24, 24, 24),
    growth_rate=4,
    coupling_dense_depth=3,
    coupling_dense_growth=16,
    deq_num_steps=2,
    deq_context_channels=16,
    deq_mid_channels=16,
    deq_depth=2,
    deq_growth=16,
    deq_context_depth=2,
    deq_context_growth=8,
)
_TINY = dict(
    block_config=(2, 2, 1),
    layers_config=(1, 1, 2),
    mid_channels=(8, 8, 8),
    growth_rate=2,
    coupling_dense_depth=2,
    coupling_dense_growth=4,
    deq_num_steps=1,
    deq_context_channels=4,
    deq_mid_channels=4,
    deq_depth=1,
    deq_growth=4,
    deq_context_depth=1,
    deq_context_growth=4,
)
