"""Sample grids: sample i drawn from the seed and i alone, PNGs, and grids that are not numbers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig
from densflow.evaluation import EvalConfig, NonFiniteError, draw_samples, save_sample_grid
from densflow.evaluation.draws import IndexedDraws
from densflow.io.files import WriteError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model() -> DenseFlow:
    torch.manual_seed(0)
    flow = perturb(DenseFlow(DenseFlowConfig.tiny()), 0.02, 0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    return init_actnorms(flow, x, generator=torch.Generator().manual_seed(1))


def test_sample_i_depends_on_the_seed_and_i_alone(model):
    grid = draw_samples(model, n_samples=6, seed=2)
    assert grid.shape == (6, 3, 16, 16) and grid.dtype == torch.uint8
    # The first samples of a larger grid are the smaller grid: what a process's share draws.
    assert torch.equal(draw_samples(model, n_samples=9, seed=2)[:6], grid)
    with torch.no_grad():  # a share of the grid, drawn alone: samples 2..5
        noise = IndexedDraws(model, 2, "sample", range(2, 6), sampling=True).next()
        share = model.dequantization.flow_inverse(model.sample_continuous(4, noise=noise))
    assert torch.equal(share, grid[2:6])
    assert not torch.equal(draw_samples(model, n_samples=6, seed=3), grid)
    cooler = draw_samples(model, n_samples=6, seed=2, temperature=0.5)
    assert not torch.equal(cooler, grid)


def test_sample_grid_is_a_png(model, tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    samples = save_sample_grid(model, path, EvalConfig(n_samples=8, nrow=4))
    assert samples.shape == (8, 3, 16, 16) and samples.dtype == torch.uint8
    with Image.open(path) as img:  # 4 columns and 2 rows of 16 px with 2 px padding
        assert img.size == (4 * 16 + 5 * 2, 2 * 16 + 3 * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left


def test_sample_grid_is_written_as_every_file_of_densflow(model, tmp_path):
    # densflow.io.files.atomic_write: a replaced file keeps its mode and a link its target; a
    # device is written through; a full disk is one WriteError line; no temporary is left.
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"the previous grid")
    grid.chmod(0o640)
    link = tmp_path / "link.png"
    link.symlink_to(grid)
    save_sample_grid(model, link, n_samples=2)
    assert link.is_symlink() and grid.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(grid.stat().st_mode) == 0o640
    save_sample_grid(model, "/dev/null", n_samples=2)
    assert Path("/dev/null").is_char_device()
    if Path("/dev/full").exists():
        with pytest.raises(WriteError, match=r"cannot write /dev/full: No space left"):
            save_sample_grid(model, "/dev/full", n_samples=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "link.png"]


def test_sample_grid_in_bf16_keeps_the_draws_and_runs_the_networks_in_bf16(model, tmp_path):
    from densflow.coupling import CouplingNet

    dtypes = []
    net = next(m for m in model.modules() if isinstance(m, CouplingNet))
    net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))

    def grid(amp):
        return save_sample_grid(model, tmp_path / f"{amp}.png", n_samples=8, amp=amp)

    exact, fast = grid("none"), grid("bf16")
    assert dtypes == [torch.float32, torch.bfloat16]
    # The same noise through slightly different networks: pixels a level or so apart at most.
    assert (exact.int() - fast.int()).abs().max() <= 2
    with pytest.raises(ValueError, match="amp must be one of"):
        grid("fp16")
    assert not (tmp_path / "fp16.png").exists()


def test_cuda_graphs_on_a_cpu_draw_the_same_samples(model, tmp_path, monkeypatch):
    from densflow.performance import GraphedFlow

    calls, real = [], GraphedFlow.sample_continuous

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GraphedFlow, "sample_continuous", spy)
    model.train()  # draw_samples puts it in eval mode, and back
    for amp in ("none", "bf16"):
        plain_png, graphed_png = tmp_path / f"plain_{amp}.png", tmp_path / f"graphed_{amp}.png"
        plain = save_sample_grid(model, plain_png, n_samples=8, amp=amp)
        with pytest.warns(RuntimeWarning, match="on cpu the sampling runs eagerly"):
            graphed = save_sample_grid(model, graphed_png, n_samples=8, amp=amp, cuda_graphs=True)
        assert torch.equal(graphed, plain)
        assert graphed_png.read_bytes() == plain_png.read_bytes()
    assert len(calls) == 2
    assert model.training


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: p.mul_(1e30),  # finite weights whose inverse overflows
        lambda p: p.fill_(float("nan")),  # weights that are not numbers
    ],
    ids=["huge", "nan"],
)
def test_a_grid_that_is_not_numbers_is_refused_and_nothing_is_written(model, tmp_path, spoil):
    with torch.no_grad():
        for p in model.parameters():
            spoil(p)
    path = tmp_path / "grid.png"
    with pytest.raises(NonFiniteError, match="not finite"):
        save_sample_grid(model, path, n_samples=4)
    assert list(tmp_path.iterdir()) == []
