"""DenseFlow, assembled from a configuration (Grcić, Grubišić & Šegvić, NeurIPS 2021).

Read top to bottom, the log-likelihood of an 8-bit image ``x`` of shape ``(B, 3, H, W)``:

1. variational dequantization: ``v = (x + u)/256`` with ``u ~ q(u | x)``; bound term
   ``−D ln 256 − ln q(u | x)`` (:mod:`densflow.dequantization`);
2. shift by −0.5 and squeeze 2×2 → ``(B, 12, H/2, W/2)`` (log-det 0);
3. for each dense block ``b``: the block (glow-like modules, and cross-unit couplings that append
   ``growth_rate`` noise channels, eq. 6–9), then — except after the last block — a transition that
   squeezes and factors out half of the channels under N(0, I) (:mod:`densflow.multiscale`);
4. the learned per-channel Gaussian prior on what is left (:mod:`densflow.prior`).

``log_prob`` is the single-sample lower bound (eq. 5 with one noise draw per coupling plus the
dequantization bound); ``iw_log_prob`` the importance-weighted bound with ``k`` samples.

DenseFlow-74-10 (:meth:`DenseFlowConfig.paper`): blocks of ``(6, 4, 1)`` units with
``(5, 6, 20)`` glow-like modules each (6·5 + 4·6 + 20 = 74), growth rate 10 — 130,647,294
parameters at 32×32 and at 64×64.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .base import squeeze, unsqueeze
from .cross_unit import InvertibleDenseBlock
from .dequantization import VariationalDequantization
from .multiscale import Transition
from .noise import randn
from .prior import LearnedGaussianPrior

__all__ = ["DenseFlowConfig", "DenseFlow", "PRESETS"]


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
    """Noise channels appended by each cross-unit coupling."""
    coupling_dense_depth: int = 7
    coupling_dense_growth: int = 64
    num_landmarks: int = 4
    """Landmarks of the Nyström attention."""
    pinv_iterations: int = 6
    conv1x1: str = "plain"
    """``"plain"`` (the paper) or ``"lu"`` (LU-parameterised)."""
    deq_num_steps: int = 4
    deq_context_channels: int = 64
    deq_mid_channels: int = 64
    deq_depth: int = 4
    deq_growth: int = 64
    deq_context_depth: int = 4
    deq_context_growth: int = 16
    num_bits: int = field(default=8)

    def __post_init__(self) -> None:
        # Lists from JSON or argparse become tuples, so configs compare and hash by value.
        for name in ("block_config", "layers_config", "mid_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.block_config)
        if not (len(self.layers_config) == len(self.mid_channels) == n) or n == 0:
            raise ValueError(
                "block_config, layers_config and mid_channels need one entry per dense block, got "
                f"{self.block_config}, {self.layers_config}, {self.mid_channels}"
            )
        if self.num_bits != 8:
            raise ValueError(f"only 8-bit images are supported, got num_bits={self.num_bits}")
        if self.conv1x1 not in ("plain", "lu"):
            raise ValueError(f"conv1x1 must be 'plain' or 'lu', got {self.conv1x1!r}")
        if self.image_size % 2**n:
            raise ValueError(
                f"image_size {self.image_size} cannot be squeezed {n} times (one initial squeeze "
                "and "
                f"{n - 1} transitions): it must be divisible by {2**n}"
            )
        for b in range(n):
            side = self.image_size // 2 ** (b + 1)
            if (side * side) % self.num_landmarks:
                raise ValueError(
                    f"dense block {b} works at {side}×{side}, whose {side * side} positions "
                    "cannot be "
                    f"split into {self.num_landmarks} Nyström landmarks; use a larger image_size, "
                    "fewer "
                    "blocks or another num_landmarks"
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
        """A named preset (see :data:`PRESETS`), optionally at another image size."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        factory = getattr(cls, PRESETS[name])
        return factory() if image_size is None else factory(image_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DenseFlowConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DenseFlowConfig fields {sorted(unknown)}")
        return cls(**d)


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

PRESETS = {"paper": "paper", "small": "small", "tiny": "tiny"}
"""Preset name → :class:`DenseFlowConfig` factory method."""


class DenseFlow(nn.Module):
    """DenseFlow for 8-bit RGB images of ``config.image_size`` pixels a side.

    Example:
        >>> import torch
        >>> from densflow import DenseFlow, DenseFlowConfig, bits_per_dim
        >>> _ = torch.manual_seed(0)
        >>> model = DenseFlow(DenseFlowConfig.tiny()).eval()
        >>> x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        >>> g = torch.Generator().manual_seed(0)
        >>> model.log_prob(x, generator=g).shape
        torch.Size([2])
        >>> model.sample(2, generator=g).dtype
        torch.uint8
    """

    def __init__(self, config: DenseFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DenseFlowConfig()
        self.dequantization = VariationalDequantization(
            config.deq_num_steps,
            config.deq_context_channels,
            config.deq_mid_channels,
            config.deq_depth,
            config.deq_growth,
            config.deq_context_depth,
            config.deq_context_growth,
        )
        blocks, channels, side = [], 12, config.image_size // 2
        for b, (units, layers, mid) in enumerate(
            zip(config.block_config, config.layers_config, config.mid_channels, strict=True)
        ):
            if b > 0:  # transition: squeeze (×4 channels) and keep half
                channels, side = 2 * channels, side // 2
            block = InvertibleDenseBlock(
                channels,
                units,
                layers,
                config.growth_rate,
                mid,
                dense_depth=config.coupling_dense_depth,
                dense_growth=config.coupling_dense_growth,
                num_landmarks=config.num_landmarks,
                pinv_iterations=config.pinv_iterations,
                conv1x1=config.conv1x1,
            )
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.transition = Transition()
        self.prior = LearnedGaussianPrior(channels, (side, side))

    # ------------------------------------------------------------------ input checks
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def _check_images(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor of uint8 images, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(
                f"expected uint8 images with values 0..255, got dtype {x.dtype}. DenseFlow models "
                "discrete 8-bit data; convert images in [0, 1] with (x * "
                "255).round().to(torch.uint8)"
            )
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected a batch of RGB images of shape (B, 3, H, W), got shape {tuple(x.shape)}"
            )
        size = self.config.image_size
        if tuple(x.shape[2:]) != (size, size):
            raise ValueError(
                f"this model was built for {size}×{size} images, got {x.shape[2]}×{x.shape[3]}; "
                "build "
                f"one with DenseFlowConfig(image_size={x.shape[2]}, ...) (needs a square size "
                f"divisible by {2 ** len(self.blocks)})"
            )
        if x.dtype != torch.uint8 and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"expected integer values in 0..255, got values in [{int(x.min())}, {int(x.max())}]"
            )
        return x.to(self.prior.loc.dtype)

    # ------------------------------------------------------------------ noise
    def noise_shapes(
        self, batch_size: int, *, sampling: bool = False
    ) -> dict[str, tuple[int, ...]]:
        """Shape of every Gaussian draw of one pass, in the order the official code draws them.

        Likelihood (the default): ``dequantization`` (the base noise ε of q(u|x)), then
        ``block{b}.cross_unit{i}`` (the ``e`` of each cross-unit coupling, eq. 8). Sampling
        (``sampling=True``): ``prior``, then ``transition{b}`` from the last transition back to
        the first (the dropped halves). The names match the terms of :meth:`log_prob_terms`.
        """
        # Every draw has the shape of a stage of the forward pass (or its spatial size).
        stages = dict(self.stage_shapes(batch_size))
        if sampling:
            shapes = {"prior": stages[f"block{len(self.blocks) - 1}"]}
            for b in reversed(range(1, len(self.blocks))):  # the dropped half = the kept half
                shapes[f"transition{b - 1}"] = stages[f"transition{b - 1}"]
            return shapes
        shapes = {"dequantization": stages["squeeze"]}  # ε lives at the squeezed resolution
        for b, block in enumerate(self.blocks):
            side = stages[f"block{b}"][-1]
            for i in range(1, len(block.units)):
                shapes[f"block{b}.cross_unit{i}"] = (batch_size, block.growth_rate, side, side)
        return shapes

    def draw_noise(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        sampling: bool = False,
        skip: tuple[str, ...] = (),
    ) -> dict[str, Tensor]:
        """Standard-normal draws for :meth:`noise_shapes` (but the names in ``skip``), in that
        order, from ``generator``.

        Drawing everything before the pass gives the same numbers as drawing each tensor where it
        is used (no draw depends on the data), and leaves the pass itself free of random draws:
        one graph for ``torch.compile`` (:func:`densflow.performance.compile_model`).
        """
        dtype, device = self.prior.loc.dtype, self.prior.loc.device
        return {
            name: randn(shape, generator=generator, dtype=dtype, device=device)
            for name, shape in self.noise_shapes(batch_size, sampling=sampling).items()
            if name not in skip
        }

    def _check_noise(self, noise: dict[str, Tensor], batch_size: int, sampling: bool) -> None:
        expected = self.noise_shapes(batch_size, sampling=sampling)
        got = {name: tuple(t.shape) for name, t in noise.items()}
        wrong = [name for name, t in noise.items() if not t.is_floating_point()]
        if wrong:
            raise ValueError(
                f"noise must be floating point (standard-normal draws); {wrong} are not"
            )
        if got != expected:
            raise ValueError(
                f"noise does not fit this model and batch of {batch_size}: expected the shapes "
                f"{expected}, got {got}. Make it with model.draw_noise({batch_size}"
                f"{', sampling=True' if sampling else ''})"
            )

    # ------------------------------------------------------------------ likelihood
    def _flow(
        self, v: Tensor, noise: dict[str, Tensor], terms: dict[str, Tensor] | None
    ) -> list[Tensor]:
        """Dequantized ``v`` → multi-scale latents ``[dropped_0, …, z]``; fills ``terms``."""
        latents = []
        h = squeeze(v - 0.5)
        for b, block in enumerate(self.blocks):
            if b > 0:
                h, dropped = self.transition(h)
                latents.append(dropped)
                if terms is not None:
                    terms[f"transition{b - 1}"] = self.transition.log_prob_dropped(dropped)
            e = [noise[f"block{b}.cross_unit{i}"] for i in range(1, len(block.units))]
            h, unit_ldjs, cross_terms = block.forward_terms(h, noise=e)
            if terms is not None:
                for i, ldj in enumerate(unit_ldjs):
                    if i > 0:
                        terms[f"block{b}.cross_unit{i}"] = cross_terms[i - 1]
                    terms[f"block{b}.unit{i}"] = ldj
        latents.append(h)
        if terms is not None:
            terms["prior"] = self.prior.log_prob(h)
        return latents

    def log_prob_terms(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Every term of the single-sample bound, in the order the flow computes them.

        Keys: ``dequantization`` (−D ln 256 − ln q(u|x)); ``block{b}.unit{i}`` (the log-dets of
        unit i's glow-like modules); ``block{b}.cross_unit{i}`` (Σ log σ − ln N(e) of the
        coupling that feeds unit i, eq. 9); ``transition{b}`` (ln N of the dropped half);
        ``prior``. Each value has shape ``(B,)`` (nats); their sum is :meth:`log_prob`.

        The noise is drawn with ``generator`` (:meth:`draw_noise`) unless ``noise`` is given.
        """
        x = self._check_images(x)
        if noise is None:
            noise = self.draw_noise(x.shape[0], generator)
        else:
            self._check_noise(noise, x.shape[0], sampling=False)
        return self._log_prob_terms(x, noise)

    def _log_prob_terms(self, x: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`log_prob_terms` of checked float images and drawn noise: no random draws, no
        host reads (what :func:`~densflow.performance.compile_model` compiles)."""
        v, deq_term = self.dequantization(x, eps=noise["dequantization"])
        terms = {"dequantization": deq_term}
        self._flow(v, noise, terms)
        return terms

    def encode(self, v: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Continuous ``v ∈ [0, 1)`` ``(B, 3, H, W)`` → latents
        ``[dropped_0, …, dropped_{n−2}, z]``.

        The cross-unit noise is drawn from ``generator``; :meth:`decode` inverts this exactly.
        Dequantize uint8 images first with
        ``model.dequantization(x.to(model.prior.loc.dtype), generator)[0]``.
        """
        return self._flow(v, self.draw_noise(v.shape[0], generator, skip=("dequantization",)), None)

    def decode(self, latents: list[Tensor]) -> Tensor:
        """Inverse of :meth:`encode`: latents → continuous ``v``
        (quantize with ``floor(256·v)``)."""
        if len(latents) != len(self.blocks):
            raise ValueError(
                f"expected {len(self.blocks)} latents (the dropped halves and z), got "
                f"{len(latents)}"
            )
        h = latents[-1]
        for b in reversed(range(len(self.blocks))):
            h = self.blocks[b].inverse(h)
            if b > 0:
                h = self.transition.inverse(h, latents[b - 1])
        return unsqueeze(h) + 0.5

    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Single-sample lower bound on ``ln P(x)`` in nats per image, shape ``(B,)``.

        Arguments:
            x: uint8 images ``(B, 3, H, W)`` (other integer dtypes with values 0..255 work too).
            generator: the source of every random draw (dequantization and cross-unit noise).
            noise: the draws themselves (:meth:`draw_noise`) instead of ``generator``.
        """
        return torch.stack(list(self.log_prob_terms(x, generator, noise=noise).values())).sum(dim=0)

    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """``model(x)`` is :meth:`log_prob` (so that wrappers such as DDP see the training pass)."""
        return self.log_prob(x, generator, noise=noise)

    @torch.no_grad()
    def iw_log_prob(
        self,
        x: Tensor,
        k: int,
        chunk_size: int = 50,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Importance-weighted bound ``ln (1/k) Σ_j w_j`` with ``k`` samples, shape ``(B,)``.

        Every ``w_j`` is one single-sample bound (fresh dequantization and cross-unit noise).
        Samples are evaluated ``chunk_size`` at a time — the batch repeated ``chunk_size`` times in
        one forward pass — and combined with a running ``logsumexp``, so k = 1000 fits in memory.
        Call it in eval mode (BatchNorm then uses its running statistics).
        """
        if k < 1 or chunk_size < 1:
            raise ValueError(
                f"k and chunk_size must be positive, got k={k}, chunk_size={chunk_size}"
            )
        x = self._check_images(x).to(torch.uint8)
        b = x.shape[0]
        running = None
        done = 0
        while done < k:
            c = min(chunk_size, k - done)
            log_w = self.log_prob(x.repeat(c, 1, 1, 1), generator).view(c, b)
            chunk = torch.logsumexp(log_w, dim=0)
            running = chunk if running is None else torch.logaddexp(running, chunk)
            done += c
        return running - math.log(k)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` uint8 images ``(n, 3, H, W)``.

        One pass of the inverse: the prior and the dropped halves are drawn (their standard
        deviations scaled by ``temperature``); the noise channels of the cross-unit couplings are
        simply dropped, and dequantization is undone by ``floor(256·v)``.
        """
        return VariationalDequantization.quantize(self.sample_continuous(n, temperature, generator))

    @torch.no_grad()
    def sample_continuous(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """The continuous ``v ∈ [0, 1)`` just before quantization, ``(n, 3, H, W)``.

        The standard-normal draws (:meth:`draw_noise` with ``sampling=True``: the prior's, then
        the dropped halves' from the last transition back to the first, the official order) come
        from ``generator`` unless ``noise`` is given.
        """
        if noise is None:
            noise = self.draw_noise(n, generator, sampling=True)
        else:
            self._check_noise(noise, n, sampling=True)
        return self._sample_continuous(noise, temperature)

    def _sample_continuous(self, noise: dict[str, Tensor], temperature: float) -> Tensor:
        """:meth:`sample_continuous` from drawn noise (what ``compile_model`` compiles)."""
        h = self.prior.sample_from(noise["prior"], temperature)
        for b in reversed(range(len(self.blocks))):
            h = self.blocks[b].inverse(h)
            if b > 0:
                h = self.transition.inverse(h, temperature * noise[f"transition{b - 1}"])
        return unsqueeze(h) + 0.5

    def stage_shapes(self, batch_size: int = 1) -> list[tuple[str, tuple[int, ...]]]:
        """Tensor shape after each stage of the forward pass, without running the networks."""
        c, s = 12, self.config.image_size // 2
        shapes = [("input", (batch_size, 3, 2 * s, 2 * s)), ("squeeze", (batch_size, c, s, s))]
        for b, block in enumerate(self.blocks):
            if b > 0:
                c, s = 2 * c, s // 2
                shapes.append((f"transition{b - 1}", (batch_size, c, s, s)))
            c = block.out_channels
            shapes.append((f"block{b}", (batch_size, c, s, s)))
        return shapes

    # ------------------------------------------------------------------ model directories
    @classmethod
    def from_pretrained(cls, name_or_dir: str, **kwargs) -> DenseFlow:
        """A model directory, a cached name (``"cifar10"``…) or a Hub repo id: see
        :func:`densflow.pretrained.from_pretrained`."""
        from .pretrained import from_pretrained  # pretrained imports this module

        return from_pretrained(name_or_dir, **kwargs)

    def save_pretrained(self, directory: str, **kwargs) -> None:
        """``config.json`` + ``model.safetensors``, atomically: see
        :func:`densflow.pretrained.save_pretrained`."""
        from .pretrained import save_pretrained

        save_pretrained(self, directory, **kwargs)
