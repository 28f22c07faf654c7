r"""Likelihood bounds and their unit, bits per dimension.

DenseFlow's log-likelihood is a lower bound twice over: variational dequantization (the Flow++
bound of Ho et al., 2019, which the official implementation uses; docs/official.md) and the noise
appended by the cross-unit couplings (eq. 5, Sec. 2.1). With one noise
sample the bound is

.. math:: \ln p(x) \ge \mathbb{E}_{e\sim q}\left[\ln p(x, e) - \ln q(e \mid x)\right],

and with :math:`k` samples the importance-weighted bound (Burda et al., 2016)

.. math:: \ln p(x) \ge \mathbb{E}\left[\ln \frac{1}{k}\sum_{j=1}^{k} w_j\right],
   \qquad \ln w_j = \ln p(x, e_j) - \ln q(e_j \mid x),

is tighter and does not decrease as :math:`k` grows. :func:`importance_weighted_log_prob` is the
one implementation of it that the model (:meth:`~densflow.model.DenseFlow.iw_log_prob`), its
CUDA-graphed passes and the test-set evaluation (:mod:`densflow.evaluation`) share: each gives
it only its single-sample pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .utils.errors import InputError

__all__ = ["bits_per_dim", "importance_weighted_bound", "importance_weighted_log_prob", "num_dims"]


def num_dims(image_shape: int | Sequence[int]) -> int:
    """Number of sub-pixels D of one image given as ``(C, H, W)`` (or D itself)."""
    if isinstance(image_shape, int):
        return image_shape
    return math.prod(int(s) for s in image_shape)


def bits_per_dim(log_prob: Tensor | float, image_shape: int | Sequence[int]) -> Tensor:
    r"""Convert a log-likelihood in nats per image to bits per dimension.

    .. math:: \mathrm{bpd} = -\frac{\ln p(x)}{D \ln 2},

    where :math:`D = C H W`. The :math:`-D\ln 256` of mapping 8-bit values to :math:`[0, 1)`
    is already inside densflow's ``log_prob``, so there is no extra offset here.

    Arguments:
        log_prob: nats per image, any shape (half precision is promoted to float32).
        image_shape: ``(C, H, W)`` of one image, or D.

    Example:
        >>> import math, torch
        >>> bits_per_dim(torch.tensor(-3072 * math.log(256.0), dtype=torch.float64), (3, 32, 32))
        tensor(8., dtype=torch.float64)
    """
    log_prob = torch.as_tensor(log_prob)
    if not torch.is_floating_point(log_prob):
        raise InputError(f"log_prob must be a floating tensor of nats, got dtype {log_prob.dtype}")
    if log_prob.dtype in (torch.float16, torch.bfloat16):
        log_prob = log_prob.float()
    return -log_prob / (num_dims(image_shape) * math.log(2.0))


def importance_weighted_bound(log_weights: Tensor, dim: int = 0) -> Tensor:
    r"""The k-sample bound :math:`\ln \frac{1}{k}\sum_j w_j` from log-weights along ``dim``.

    Computed with ``logsumexp`` so that weights of :math:`e^{-20000}` do not underflow.
    """
    k = log_weights.shape[dim]
    return torch.logsumexp(log_weights, dim=dim) - math.log(k)


def importance_weighted_log_prob(
    log_prob: Callable[[Tensor, int], Tensor], x: Tensor, k: int, chunk_size: int | None = None
) -> Tensor:
    r"""The k-sample bound :math:`\ln \frac{1}{k}\sum_{j=1}^{k} w_j` of each image of the batch
    ``x`` ``(B, …)``, its log-weights computed ``chunk_size`` samples at a time (all ``k`` at once
    when None), so that k = 1000 fits in memory.

    ``log_prob(repeated, start)`` is a single-sample bound :math:`\ln w_j` (fresh draws for each
    row) of ``repeated = x.repeat(c, 1, 1, 1)``, samples ``start, …, start + c − 1`` of every image:
    row ``j·B + b`` is sample ``start + j`` of image ``b``. Each image's bound is then one
    ``logsumexp`` over its own ``k`` log-weights, so it is the same number whatever the chunk size
    and whatever else is in the batch.
    """
    b = x.shape[0]
    chunks, start = [], 0
    step = k if chunk_size is None else chunk_size
    while start < k:
        c = min(step, k - start)
        chunks.append(log_prob(x.repeat(c, *[1] * (x.dim() - 1)), start).view(c, b))
        start += c
    per_image = torch.cat(chunks).T.contiguous()  # (B, k): one row of log-weights per image
    return torch.stack([importance_weighted_bound(row) for row in per_image])
