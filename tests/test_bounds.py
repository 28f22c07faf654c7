"""The bounds: bits per dimension, and the importance-weighted bound computed in chunks."""

from __future__ import annotations

import math

import pytest
import torch

from densflow.bounds import bits_per_dim, importance_weighted_bound, importance_weighted_log_prob


def iw(table: torch.Tensor, k: int, chunk: int | None, calls: list | None = None) -> torch.Tensor:
    """The k-sample bound of the ``B`` columns of a ``(k, B)`` table of log-weights: the images
    are the column indices, and the single-sample bound of a repeated batch reads rows
    ``start..start+c-1``, checking that row ``j·B + b`` is image ``b``."""
    images = torch.arange(table.shape[1])

    def log_prob(repeated: torch.Tensor, start: int) -> torch.Tensor:
        c = len(repeated) // len(images)
        assert torch.equal(repeated, images.repeat(c))
        if calls is not None:
            calls.append((start, c))
        return table[start : start + c].reshape(-1)

    return importance_weighted_log_prob(log_prob, images, k, chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_chunked_bound_is_the_same_number_for_every_chunk_size_and_batch(dtype):
    g = torch.Generator().manual_seed(0)
    table = (torch.randn(13, 5, generator=g, dtype=torch.float64) * 30 - 2000).to(dtype)
    expected = torch.logsumexp(table.double(), dim=0) - math.log(13)
    results = {}
    for chunk in (1, 3, 5, 13, 50, None):
        calls = []
        results[chunk] = iw(table, 13, chunk, calls)
        step = 13 if chunk is None else min(chunk, 13)
        assert [s for s, _ in calls] == list(range(0, 13, step))  # every sample exactly once
        assert sum(c for _, c in calls) == 13
    for chunk, got in results.items():
        assert got.dtype == dtype and got.shape == (5,)
        assert torch.equal(got, results[1]), chunk  # to the bit, whatever the chunking
    assert torch.allclose(results[1].double(), expected, rtol=1e-6 if dtype == torch.float32 else 0)
    # Each image's bound is its own: the same number alone as in a batch of five.
    for b in range(5):
        alone = iw(table[:, b : b + 1], 13, 4)
        assert torch.equal(alone, results[1][b : b + 1])


def test_the_bound_does_not_underflow_and_lies_between_the_mean_and_the_max():
    table = torch.tensor([[-20000.0, -3.0], [-20001.0, -7.0], [-20002.5, -4.0]])
    bound = iw(table, 3, 2)
    assert torch.isfinite(bound).all()
    assert torch.all(bound >= table.mean(0)) and torch.all(bound <= table.max(0).values)
    assert torch.equal(bound, importance_weighted_bound(table, dim=0))


def test_bits_per_dim_of_uniform_8_bit_noise_is_8():
    log_p = torch.tensor(-3072 * math.log(256.0), dtype=torch.float64)
    assert bits_per_dim(log_p, (3, 32, 32)).item() == pytest.approx(8.0, rel=1e-15)
    assert bits_per_dim(log_p.half(), 3072).dtype == torch.float32
    with pytest.raises(ValueError, match="floating tensor"):
        bits_per_dim(torch.tensor(3), 3072)
