"""DenseFlow, assembled from a configuration (Grcić, Grubišić & Šegvić, NeurIPS 2021).

Read top to bottom, the log-likelihood of an 8-bit image ``x`` of shape ``(B, 3, H, W)`` is a
chain of steps (:class:`~densflow.base.FlowStep`), each adding its terms to the bound:

1. variational dequantization: ``v = (x + u)/256`` with ``u ~ q(u | x)``; term
   ``−D ln 256 − ln q(u | x)`` (:mod:`densflow.dequantization`);
2. shift by −0.5 and squeeze 2×2 → ``(B, 12, H/2, W/2)`` (log-det 0, no term);
3. for each dense block ``b``: the block (units of glow-like modules, and cross-unit couplings
   that append ``growth_rate`` noise channels, eqs. 6–9, Sec. 2.1;
   :mod:`densflow.invertible_dense_block`), then — except after the last block — a transition
   that squeezes and factors out half of the channels under N(0, I) (:mod:`densflow.multiscale`);
4. the learned per-channel Gaussian prior on what is left (:mod:`densflow.prior`).

``log_prob`` is the single-sample lower bound (eq. 9 for every coupling, with one noise draw
each, plus the dequantization bound); ``iw_log_prob`` the importance-weighted bound with ``k``
samples. Sampling runs the same chain backwards.

DenseFlow-74-10 (:meth:`DenseFlowConfig.paper`): blocks of ``(6, 4, 1)`` units with
``(5, 6, 20)`` glow-like modules each (6·5 + 4·6 + 20 = 74), growth rate 10 — 130,647,294
parameters at 32×32 and at 64×64.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
from torch import Tensor, nn

from .base import FlowStep, nested, within
from .bounds import importance_weighted_log_prob
from .config import DenseFlowConfig
from .coupling import CouplingNet
from .dequantization import VariationalDequantization
from .glow import CouplingNetFactory
from .input_augmentation import InputAugmentedBlock
from .invertible_dense_block import InvertibleDenseBlock
from .multiscale import CentredSqueeze, Transition, factor_out
from .noise import draw
from .prior import LearnedGaussianPrior
from .utils.errors import InputError
from .utils.validate import check_float, check_images, check_int, check_noise

__all__ = [
    "DenseFlow",
    "FlowPasses",
    "coupling_net_factory",
    "sum_terms",
]


def coupling_net_factory(config: DenseFlowConfig, block: int) -> CouplingNetFactory:
    """The coupling networks of dense block ``block``: DenseFlow's (Fig. 2, Sec. 2.2)."""
    return functools.partial(
        CouplingNet,
        mid_channels=config.mid_channels[block],
        dense_depth=config.coupling_dense_depth,
        dense_growth=config.coupling_dense_growth,
        num_landmarks=config.num_landmarks,
        pinv_iterations=config.pinv_iterations,
        branches=config.coupling_net,
    )


def sum_terms(terms: dict[str, Tensor]) -> Tensor:
    """The bound ``(B,)`` from its terms, added one after the other in the flow's order: each
    image's number is then the same whatever else is in the batch (a reduction over a stacked
    ``(terms, B)`` tensor adds in another order for one image than for several)."""
    return functools.reduce(operator.add, terms.values())


def input_noise_channels(config: DenseFlowConfig) -> int:
    """Noise channels that ``augmentation="input"`` appends before the first unit: as many latent
    dimensions as the cross-unit couplings add (each transition halves the side, so a channel at
    block ``b`` is worth 4^-b channels at block 0), rounded half up, at least one."""
    blocks = enumerate(config.block_config)
    added = sum((units - 1) * config.growth_rate / 4**b for b, units in blocks)
    return max(1, math.floor(added + 0.5))


class FlowPasses(nn.Module):
    """The flow's two pure functions of drawn noise, the likelihood terms and the sampler: each
    runs the steps of a :class:`DenseFlow` in order (no random draws, no host reads). A module
    without state of its own, so that :func:`densflow.performance.compile_model` can replace it
    by a compiled one and leave the steps as they are."""

    def terms(self, flow: DenseFlow, x: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`DenseFlow.terms_from_noise`."""
        terms = {}
        h = x
        for name, step in flow.named_steps():
            h, step_terms = step.flow_forward(h, within(name, noise))
            terms.update(nested(name, step_terms))
        return terms

    def sample(self, flow: DenseFlow, noise: dict[str, Tensor], temperature: float) -> Tensor:
        """:meth:`DenseFlow.sample_from_noise`."""
        h = None  # nothing above the prior: it draws z from its noise
        for name, step in reversed(flow.named_steps()[1:]):
            h = step.flow_inverse(h, within(name, noise), temperature)
        return h


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
        self.squeeze = CentredSqueeze()
        blocks, channels = [], 12  # after the first squeeze
        for b, (units, layers) in enumerate(
            zip(config.block_config, config.layers_config, strict=True)
        ):
            if b > 0:  # transition: squeeze (×4 channels) and keep half
                channels = 2 * channels
            modules = dict(coupling_net=coupling_net_factory(config, b), conv1x1=config.conv1x1)
            if config.augmentation == "incremental":
                block = InvertibleDenseBlock(channels, units, layers, config.growth_rate, **modules)
            elif config.augmentation == "input" and b == 0:  # the same modules, after the noise
                block = InputAugmentedBlock(
                    channels, units * layers, input_noise_channels(config), **modules
                )
            else:  # no noise here: one unit of all the block's modules
                block = InvertibleDenseBlock(channels, 1, units * layers, 0, **modules)
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.transition = Transition()
        self.prior = LearnedGaussianPrior(channels)
        self.passes = FlowPasses()

    def named_steps(self) -> list[tuple[str, FlowStep]]:
        """The flow's steps in the x → z order, each with the name of its draws and terms.

        ``dequantization``, ``squeeze``, ``block0``, ``transition0``, ``block1``, …, ``prior``:
        the one place these names are made (a draw or term inside a step is named
        ``f"{step}.{key}"``, e.g. ``block0.cross_unit1``; see :func:`densflow.base.site`).
        """
        steps = [("dequantization", self.dequantization), ("squeeze", self.squeeze)]
        for b, block in enumerate(self.blocks):
            if b > 0:
                steps.append((f"transition{b - 1}", self.transition))
            steps.append((f"block{b}", block))
        return [*steps, ("prior", self.prior)]

    # ------------------------------------------------------------------ input checks
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    def _check_images(self, x: Tensor) -> Tensor:
        check_images(x, self.config.image_size, divisor=2 ** len(self.blocks))
        return x.to(self.prior.loc.dtype)

    # ------------------------------------------------------------------ noise
    def noise_shapes(
        self, batch_size: int, *, sampling: bool = False
    ) -> dict[str, tuple[int, ...]]:
        """Shape of every Gaussian draw of one pass, in the order the official code draws them.

        Likelihood (the default): ``dequantization`` (the base noise ε of q(u|x)), then
        ``block{b}.cross_unit{i}`` (the ``e`` of each cross-unit coupling, eq. 6). Sampling
        (``sampling=True``): ``prior``, then ``transition{b}`` from the last transition back to
        the first (the dropped halves). The names match the terms of :meth:`log_prob_terms`.
        """
        stages = self._stages(batch_size)
        if sampling:  # the steps backwards, each given the shape it starts from
            return {
                site: shape
                for name, step, _, out_shape in reversed(stages)
                for site, shape in nested(name, step.noise_shapes(out_shape, sampling=True)).items()
            }
        return {
            site: shape
            for name, step, in_shape, _ in stages
            for site, shape in nested(name, step.noise_shapes(in_shape)).items()
        }

    def _stages(self, batch_size: int) -> list[tuple[str, FlowStep, tuple, tuple]]:
        """``(name, step, input shape, output shape)`` of every step, in the x → z order."""
        shape = (batch_size, *self.image_shape)
        stages = []
        for name, step in self.named_steps():
            out = step.output_shape(shape)
            stages.append((name, step, shape, out))
            shape = out
        return stages

    def stage_shapes(self, batch_size: int = 1) -> list[tuple[str, tuple[int, ...]]]:
        """Tensor shape after each stage of the forward pass, without running the networks:
        the input, then every step between dequantization and the prior."""
        stages = self._stages(batch_size)
        return [("input", stages[0][2])] + [(name, out) for name, _, _, out in stages[1:-1]]

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
        shapes = self.noise_shapes(batch_size, sampling=sampling)
        shapes = {name: shape for name, shape in shapes.items() if name not in skip}
        return draw(shapes, generator, dtype=self.prior.loc.dtype, device=self.prior.loc.device)

    # ------------------------------------------------------------------ likelihood
    def log_prob_terms(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Every term of the single-sample bound, in the order the flow computes them.

        Keys, with the paper's 1-based unit indices (Example 1, eqs. 10–13):
        ``dequantization`` (−D ln 256 − ln q(u|x)); ``block{b}.unit{j}`` (the log-dets of the
        glow-like modules of the paper's unit f_j, code ``blocks[b].units[j - 1]``);
        ``block{b}.cross_unit{i}`` (Σ log σ − ln N(e_i) of the paper's cross-unit coupling h_i,
        between f_i and f_{i+1}, eq. 9); ``transition{b}`` (ln N of the dropped half);
        ``prior``. Each value has shape ``(B,)`` (nats); their sum is :meth:`log_prob`.

        The noise is drawn with ``generator`` (:meth:`draw_noise`) unless ``noise`` is given.
        """
        x = self._check_images(x)
        if noise is None:
            noise = self.draw_noise(x.shape[0], generator)
        else:
            check_noise(noise, self.noise_shapes(x.shape[0]), x.shape[0], sampling=False)
        return self.terms_from_noise(x, noise)

    def terms_from_noise(self, x: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`log_prob_terms` of checked float images and drawn noise: each step's terms,
        named by :meth:`named_steps`. A pure function (no random draws, no host reads): what
        :func:`~densflow.performance.compile_model` compiles (:class:`FlowPasses`)."""
        return self.passes.terms(self, x, noise)

    def encode(self, v: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Continuous ``v ∈ [0, 1)`` ``(B, 3, H, W)`` → latents
        ``[dropped_0, …, dropped_{n−2}, z]``.

        The cross-unit noise is drawn from ``generator``; :meth:`decode` inverts this exactly.
        Dequantize uint8 images first with
        ``forward_with_draws(model.dequantization, x.to(model.prior.loc.dtype), generator)[0]``
        (:func:`~densflow.base.forward_with_draws`).
        """
        noise = self.draw_noise(v.shape[0], generator, skip=("dequantization",))
        latents, h = [], v
        for name, step in self.named_steps()[1:-1]:  # between dequantization and the prior
            if isinstance(step, Transition):  # the factored-out half is a latent
                h, dropped = factor_out(h)
                latents.append(dropped)
            else:
                h, _ = step.flow_forward(h, within(name, noise))
        return [*latents, h]

    def decode(self, latents: list[Tensor]) -> Tensor:
        """Inverse of :meth:`encode`: latents → continuous ``v``
        (quantize with ``floor(256·v)``)."""
        if len(latents) != len(self.blocks):
            raise InputError(
                f"expected {len(self.blocks)} latents (the dropped halves and z), got "
                f"{len(latents)}"
            )
        h, dropped = latents[-1], list(latents[:-1])
        for _, step in reversed(self.named_steps()[1:-1]):
            # a transition takes its dropped half where sampling takes a draw (temperature 1)
            wanted = step.noise_shapes(tuple(h.shape), sampling=True)
            h = step.flow_inverse(h, {key: dropped.pop() for key in wanted})
        return h

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
        return sum_terms(self.log_prob_terms(x, generator, noise=noise))

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
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Importance-weighted bound ``ln (1/k) Σ_j w_j`` with ``k`` samples, shape ``(B,)``
        (:func:`densflow.bounds.importance_weighted_log_prob`).

        Every ``w_j`` is one single-sample bound (fresh dequantization and cross-unit noise).
        Samples are evaluated ``chunk_size`` at a time (None: all ``k`` in one pass) — the batch
        repeated ``chunk_size`` times in one forward pass — so k = 1000 fits in memory.
        Call it in eval mode (BatchNorm then uses its running statistics).
        """
        k = check_int("k", k)
        if chunk_size is not None:
            chunk_size = check_int("chunk_size", chunk_size)
        x = self._check_images(x).to(torch.uint8)
        return importance_weighted_log_prob(
            lambda repeated, start: self.log_prob(repeated, generator), x, k, chunk_size
        )

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
        return self.dequantization.flow_inverse(self.sample_continuous(n, temperature, generator))

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
        n = check_int("n", n)
        check_float("temperature", temperature, minimum=0.0)
        if noise is None:
            noise = self.draw_noise(n, generator, sampling=True)
        else:
            check_noise(noise, self.noise_shapes(n, sampling=True), n, sampling=True)
        return self.sample_from_noise(noise, temperature)

    def sample_from_noise(self, noise: dict[str, Tensor], temperature: float = 1.0) -> Tensor:
        """:meth:`sample_continuous` from drawn noise: the steps' inverses, from the prior back
        to the squeeze. A pure function, like :meth:`terms_from_noise`."""
        return self.passes.sample(self, noise, temperature)
