"""Per-index draws: image i's noise is a function of the seed and i alone."""

from __future__ import annotations

import math

import torch

from densflow import DenseFlow, DenseFlowConfig, fixed_noise
from densflow.evaluation.draws import BLOCK, STREAMS, IndexedDraws, index_seeds


def tiny() -> DenseFlow:
    torch.manual_seed(0)
    return DenseFlow(DenseFlowConfig.tiny()).eval()


def test_every_index_and_stream_of_an_evaluation_has_its_own_32_bit_seed():
    n = 5000
    seeds = [s for stream in STREAMS for s in index_seeds(7, stream, range(n))]
    assert len({s % 2**32 for s in seeds}) == len(seeds) == len(STREAMS) * n  # CPU uses 32 bits
    assert all(0 <= s < 2**64 for s in seeds)
    assert index_seeds(7, "iw", [3]) == index_seeds(7, "iw", range(5))[3:4]
    assert index_seeds(8, "iw", [3]) != index_seeds(7, "iw", [3])


def test_an_index_draws_the_same_whatever_its_batch_and_layout():
    model = tiny()
    shapes = model.noise_shapes(1)
    batch = IndexedDraws(model, 1, "iw", [4, 9, 2])
    first, second = batch.next(2), batch.next(1)  # three passes of each of the three indices
    alone = IndexedDraws(model, 1, "iw", [9])
    passes = [alone.next() for _ in range(3)]
    for name, shape in shapes.items():
        assert first[name].shape == (6, *shape[1:]) and first[name].is_contiguous()
        # row j·B + b is pass j of index b: index 9 is b = 1
        assert torch.equal(first[name][1], passes[0][name][0])
        assert torch.equal(first[name][4], passes[1][name][0])
        assert torch.equal(second[name][1], passes[2][name][0])
        assert not torch.equal(first[name][0], first[name][1])  # index 4's are its own
    # The streams differ: the single-sample bound's draws are not the importance samples'.
    single = IndexedDraws(model, 1, "single", [9]).next()
    assert not torch.equal(single["dequantization"], passes[0]["dequantization"])
    sampling = IndexedDraws(model, 1, "sample", [9], sampling=True).next()
    assert sampling.keys() == model.noise_shapes(1, sampling=True).keys()


def test_importance_sample_j_is_the_same_whatever_the_chunks_and_k():
    model = tiny()
    whole = IndexedDraws(model, 2, "iw", [0, 1]).next(2 * BLOCK + 7)
    chunked = IndexedDraws(model, 2, "iw", [0, 1])
    parts = [chunked.next(c) for c in (3, BLOCK, 30, BLOCK - 26)]  # across block boundaries
    one_by_one = IndexedDraws(model, 2, "iw", [0, 1])
    singles = [one_by_one.next() for _ in range(12)]
    for name, values in whole.items():
        assert torch.equal(torch.cat([p[name] for p in parts]), values)
        assert torch.equal(torch.cat([p[name] for p in singles]), values[:24])  # k = 12: a prefix


def test_the_draws_are_standard_normal_and_follow_fixed_noise():
    model = tiny()
    draws = IndexedDraws(model, 0, "iw", range(64)).next(8)
    values = torch.cat([t.flatten() for t in draws.values()])
    sem = 1 / math.sqrt(len(values))
    assert abs(values.mean().item()) < 5 * sem and abs(values.std().item() - 1) < 10 * sem
    with fixed_noise(0.25):
        fixed = IndexedDraws(model, 0, "iw", range(3)).next(2)
    assert all(torch.all(t == 0.25) for t in fixed.values())
