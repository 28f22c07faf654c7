"""Throughput and peak memory of DenseFlow training, IW evaluation and sampling.

Every optimisation is measured against the plain eager float32 path **in the same run**, with
the variants interleaved (A B C A B C …) and the median kept, so a noisy or shared machine still
gives meaningful ratios. Each measurement runs in a fresh process (so peak memory and warm-up are
its own). Each variant is also checked against the reference log-likelihood.

    python benchmarks/benchmark.py                      # CPU-sized config (small, 32×32, batch 16)
    python benchmarks/benchmark.py --paper      # paper config: 32×32 b64 and 64×64 b32 (GPU)
    python benchmarks/benchmark.py --variants eager,bf16 --json out.json

Variants: ``eager`` (float32, NCHW: the baseline), ``channels_last``, ``bf16`` (autocast),
``channels_last+bf16``, and with ``compile`` (``densflow.performance.compile_model``: the whole
flow, forward and backward; minutes to warm up on a CPU) ``compile``, ``compile+channels_last``,
``compile+bf16``, ``compile+channels_last+bf16``; on a GPU, with ``graph``
(``densflow.training.step.GraphedStep``: the forward and backward pass and the optimizer update
captured in CUDA graphs and replayed, as ``--cuda-graphs`` does; and the IW evaluation and
sampling passes replayed from CUDA graphs by ``densflow.performance.GraphedFlow``, as
``eval``/``sample --cuda-graphs`` do; a failed capture there runs eagerly and is flagged,
``eval_graphs_captured``) ``graph``, ``graph+channels_last``, ``graph+bf16``,
``graph+channels_last+bf16``; on a CPU, each of the first eight with ``ddp2`` in front (``ddp2``,
``ddp2+compile+channels_last+bf16``, …): the cores split between two data-parallel processes
(gloo, half the batch and half the threads each, as ``OMP_NUM_THREADS=1 torchrun
--nproc_per_node 2 -m densflow train --batch-size 8`` on two cores), in place of one process's
intra-op threads; only their training is measured. The training step is the Trainer's
(``densflow.training.step.make_step`` on the variant's switches, Adamax foreach, with its one host
read per step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim, fixed_noise
from densflow.performance import (
    GraphedFlow,
    Speed,
    autocast,
    compile_model,
    compose_coupling_nets,
    to_channels_last,
)
from densflow.training.optim import build_optimizer
from densflow.training.step import GraphedStep, TrainStep, make_step
from densflow.utils.distributed import Dist

SINGLE = (
    "eager",
    "channels_last",
    "bf16",
    "channels_last+bf16",
    "compile",
    "compile+channels_last",
    "compile+bf16",
    "compile+channels_last+bf16",
)
GPU_ONLY = ("graph", "graph+channels_last", "graph+bf16", "graph+channels_last+bf16")
# The CPU's cores as data-parallel ranks (one process each, gloo) instead of intra-op threads.
CPU_ONLY = tuple("ddp2" if v == "eager" else f"ddp2+{v}" for v in SINGLE)
VARIANTS = SINGLE + GPU_ONLY + CPU_ONLY


@dataclass
class Setup:
    name: str
    config: DenseFlowConfig
    batch_size: int


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


class PeakRSS:
    """Peak resident memory above the level at entry (Linux): the kernel's high-water mark
    (``VmHWM``), reset at entry through ``/proc/self/clear_refs``. Nothing runs while it
    measures: a sampling thread would preempt the compute threads, and cost 10–20 % of the
    throughput it is timed with. ``nan`` where the mark cannot be reset."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS (Linux ≥ 4.0)
            self.base = self._status("VmRSS")
        except OSError:
            self.base = None
        return self

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise OSError(f"no {field} in /proc/self/status")

    def __exit__(self, *exc):
        self.peak = None if self.base is None else self._status("VmHWM")

    @property
    def bytes(self) -> float:
        return float("nan") if self.peak is None else self.peak - self.base


@contextlib.contextmanager
def peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        box = {}
        yield box
        torch.cuda.synchronize(device)
        box["bytes"] = torch.cuda.max_memory_allocated(device) - base
    elif sys.platform.startswith("linux"):
        box = {}
        with PeakRSS() as rss:
            yield box
        box["bytes"] = rss.bytes
    else:
        box = {"bytes": float("nan")}
        yield box


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(setup: Setup, variant: str, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = DenseFlow(setup.config).to(device)
    size = setup.config.image_size
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(
        0, 256, (setup.batch_size, 3, size, size), dtype=torch.uint8, device=device, generator=g
    )
    with torch.no_grad():
        model.train()(x, generator=g)  # data-dependent ActNorm init, as the first training step
    compose_coupling_nets(model)  # every variant runs the composed 1×1 convolutions
    if "channels_last" in variant:
        model, x = to_channels_last(model), to_channels_last(x)
    if "compile" in variant:
        compile_model(model)
    amp = "bf16" if "bf16" in variant else "none"
    return model, x, amp


def time_calls(fn, device, warmup: int, iters: int, memory: dict | None = None, wait=None) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls; peak memory of all calls into ``memory``.
    ``wait`` marks the start and the end of the timing (default: the device's queue drained; for
    data-parallel ranks, a barrier, so that a step is as slow as the slowest rank)."""
    wait = wait or (lambda: sync(device))
    with peak_memory(device) as mem:
        for _ in range(warmup):
            fn()
        wait()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        wait()
        elapsed = time.perf_counter() - start
    if memory is not None:
        memory.update(mem)
    return elapsed / iters


def _child(fn, args, index: int, results) -> None:
    try:
        results.put((index, fn(*args), None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


def in_fresh_processes(fn, calls: list[tuple]) -> list:
    """``[fn(*args) for args in calls]``, each call in a new interpreter, all at once: clean
    allocator state, a clean peak memory, and for the ``ddp`` ranks, processes that run together.
    A failure in one re-raises here with that process's traceback."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(fn, args, i, results)) for i, args in enumerate(calls)
    ]
    try:
        for proc in procs:
            proc.start()
        got = {}
        while len(got) < len(procs):
            try:
                index, value, error = results.get(timeout=1.0)
            except queue.Empty:  # a process that died without a word (killed, out of memory)
                dead = [i for i, proc in enumerate(procs) if i not in got and proc.exitcode]
                if dead and results.empty():
                    raise RuntimeError(
                        f"benchmark process {dead[0]} exited with code "
                        f"{procs[dead[0]].exitcode} and no result"
                    ) from None
                continue
            if error is not None:
                raise RuntimeError(f"benchmark process {index} failed:\n{error}")
            got[index] = value
    except BaseException:  # Ctrl-C included: a rank waiting for a dead peer would wait forever
        for proc in procs:
            proc.terminate()
        raise
    for proc in procs:  # a normal exit runs the finalizers (inductor's compile workers' semaphores)
        proc.join()
    return [got[i] for i in range(len(procs))]


def ddp_ranks(variant: str) -> int:
    """The number of data-parallel processes of a variant: 2 for ``ddp2…``, else 1."""
    head = variant.split("+")[0]
    return int(head.removeprefix("ddp")) if head.startswith("ddp") else 1


def trainer_step(model: DenseFlow, variant: str, amp: str, dist: Dist | None = None) -> TrainStep:
    """The Trainer's step for ``variant`` (``make_step`` on its speed switches, Adamax foreach):
    the eager step, the compiled one, or the CUDA-graphed one (``GraphedStep``: the forward and
    backward pass and the update each replayed); under ``dist``, the model in DDP."""
    optimizer = build_optimizer(model, "adamax", 1e-3)
    speed = Speed(
        amp=amp,
        channels_last="channels_last" in variant,
        compile="compile" in variant,
        cuda_graphs="graph" in variant,
    )
    return make_step(model, optimizer, speed, dist=dist or Dist())


def train_step_fn(model: DenseFlow, step: TrainStep, x: torch.Tensor, g, skipped: list[int]):
    """One call of ``step`` on ``x`` with noise drawn eagerly from ``g``, as the Trainer calls
    it (with the step's one host read, the non-finite check); ``skipped`` counts the steps
    skipped as non-finite."""

    def train_step():
        metrics = step(x, model.draw_noise(x.shape[0], g), 1e-3)
        skipped[0] += metrics.loss is None

    return train_step


def equivalence(setup: Setup, model, x, amp: str) -> dict:
    """Bits/dim of ``model`` (as prepared by the variant) against float32 eager: the same
    weights, the same fixed noise."""
    d = math.prod(setup.config.image_shape)
    reference = DenseFlow(setup.config).to(x.device)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    model.eval()
    with torch.no_grad(), fixed_noise(0.3):
        ref_bpd = bits_per_dim(reference(x.contiguous()), d)
        with autocast(x.device, amp):
            bpd = bits_per_dim(model(x), d)
    return {
        "max_abs_bpd_diff": float((bpd - ref_bpd).abs().max()),
        "max_rel_logp_diff": float(((bpd - ref_bpd) / ref_bpd).abs().max()),
    }


def measure(setup: Setup, variant: str, device: torch.device, args) -> dict:
    model, x, amp = build(setup, variant, device)
    g = torch.Generator(device=device).manual_seed(1)
    step = trainer_step(model, variant, amp)
    skipped = [0]
    train_step = train_step_fn(model, step, x, g, skipped)

    out = {"variant": variant}
    model.train()
    mem = {}
    dt = time_calls(train_step, device, args.warmup, args.steps, mem)
    out["train_images_per_s"] = setup.batch_size / dt
    out["train_peak_bytes"] = mem["bytes"]
    out["train_losses_finite"] = skipped[0] == 0  # a fast variant that diverges is no speed-up
    if isinstance(step, GraphedStep) and not (step.graphed.captured and step.update.captured):
        raise RuntimeError(f"{variant}: the CUDA graph capture failed (see the warning above)")

    model.eval()
    k, chunk = args.iw_samples, args.iw_chunk
    xs = x[: args.eval_batch]
    # The graph variants replay evaluation and sampling from CUDA graphs as well (GraphedFlow, as
    # `eval --cuda-graphs` does; it applies amp itself); the untimed first call captures.
    flow = GraphedFlow(model, amp) if "graph" in variant else None

    def iw():
        if flow is not None:
            flow.iw_log_prob(xs, k, chunk, generator=g)
            return
        with torch.no_grad(), autocast(device, amp):
            model.iw_log_prob(xs, k, chunk, generator=g)

    mem = {}
    dt = time_calls(iw, device, 1, args.eval_iters, mem)
    out["iw_image_samples_per_s"] = xs.shape[0] * k / dt
    out["iw_peak_bytes"] = mem["bytes"]

    def sample():
        if flow is not None:
            flow.sample(setup.batch_size, generator=g)
            return
        with autocast(device, amp):
            model.sample(setup.batch_size, generator=g)

    mem = {}
    dt = time_calls(sample, device, 1, args.eval_iters, mem)
    out["sample_images_per_s"] = setup.batch_size / dt
    out["sample_peak_bytes"] = mem["bytes"]
    if flow is not None:  # a failed capture ran eagerly (with a warning): flagged, not fatal,
        out["eval_graphs_captured"] = flow.captured  # so the training figures are kept
    out.update(equivalence(setup, model, x, amp))
    return out


def measure_ddp_rank(
    rank: int, ranks: int, threads: int, init_file: str, setup: Setup, variant: str, args
) -> dict:
    """One rank of a ``ddp`` variant: the training step as under ``torchrun``, each rank on its
    ``batch_size / ranks`` images with ``threads / ranks`` threads, gradients averaged by gloo.
    Only training is measured (evaluation and sampling run in one process)."""
    import torch.distributed as tdist

    torch.set_num_threads(max(1, threads // ranks))
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=ranks)
    try:
        single = variant.partition("+")[2] or "eager"
        model, x, amp = build(setup, single, torch.device("cpu"))  # the same weights on every rank
        b = setup.batch_size // ranks
        shard = x[rank * b : (rank + 1) * b]
        step = trainer_step(model, single, amp, Dist(rank, ranks, 0))  # DDP over gloo
        g = torch.Generator().manual_seed(1 + rank)
        skipped = [0]
        train_step = train_step_fn(model, step, shard, g, skipped)
        model.train()
        mem = {}
        dt = time_calls(
            train_step, torch.device("cpu"), args.warmup, args.steps, mem, wait=tdist.barrier
        )
        finite = torch.tensor(int(skipped[0] == 0))
        tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)
        out = {
            "variant": variant,
            "train_images_per_s": setup.batch_size / dt,
            "train_peak_bytes": mem["bytes"],
            "train_losses_finite": bool(finite),
            "iw_image_samples_per_s": float("nan"),
            "iw_peak_bytes": float("nan"),
            "sample_images_per_s": float("nan"),
            "sample_peak_bytes": float("nan"),
        }
        # The ranks hold the same weights: rank 0's check is the variant's.
        return out | equivalence(setup, model, x, amp) if rank == 0 else out
    finally:
        tdist.destroy_process_group()


def measure_fresh(setup: Setup, variant: str, device: torch.device, args) -> dict:
    """``measure`` in a fresh process, or a ``ddp`` variant's ranks in as many."""
    ranks = ddp_ranks(variant)
    if ranks == 1:
        return in_fresh_processes(measure, [(setup, variant, device, args)])[0]
    if setup.batch_size % ranks:
        raise ValueError(
            f"{variant}: the batch size {setup.batch_size} does not split into "
            f"{ranks} equal shards; choose a multiple of {ranks}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        results = in_fresh_processes(
            measure_ddp_rank,
            [
                (r, ranks, torch.get_num_threads(), init_file, setup, variant, args)
                for r in range(ranks)
            ],
        )
    out = results[0]
    out["train_peak_bytes"] = sum(r["train_peak_bytes"] for r in results)  # the machine's total
    return out


def run(setups: list[Setup], variants: list[str], device: torch.device, args) -> dict:
    report = {"device": device_name(device), "torch": torch.__version__, "setups": []}
    for setup in setups:
        rounds = []
        for r in range(args.repeats):  # interleaved: a slow phase of the machine hits every variant
            rounds.append({})
            for v in variants:
                rounds[-1][v] = got = measure_fresh(setup, v, device, args)
                print(
                    f"[{setup.name}] {v}: {got['train_images_per_s']:.1f} train img/s, "
                    f"{_num(got['iw_image_samples_per_s'], '.1f')} IW img·samples/s",
                    file=sys.stderr,
                )
            print(f"[{setup.name}] round {r + 1}/{args.repeats} done", file=sys.stderr)
        rows = []
        for v in variants:
            runs = [rnd[v] for rnd in rounds]
            row = {"variant": v}
            for key in runs[0]:
                if key != "variant":
                    values = [run[key] for run in runs]
                    row[key] = (
                        all(values) if isinstance(values[0], bool) else statistics.median(values)
                    )
            rows.append(row)
        base = rows[0]
        for row in rows:
            for key in ("train_images_per_s", "iw_image_samples_per_s", "sample_images_per_s"):
                row[key.replace("_per_s", "_speedup")] = row[key] / base[key]
        report["setups"].append(
            {
                "name": setup.name,
                "batch_size": setup.batch_size,
                "config": setup.config.to_dict(),
                "baseline": variants[0],
                "rows": rows,
                "rounds": rounds,
            }
        )  # the raw measurements: their spread is the noise
    return report


def _num(value: float, spec: str) -> str:
    return "—" if math.isnan(value) else format(value, spec)  # not measured (ddp: training only)


def table(report: dict) -> str:
    lines = [f"device: {report['device']}, torch {report['torch']}"]
    for s in report["setups"]:
        lines += [
            "",
            f"{s['name']} (batch {s['batch_size']}), ratios against '{s['baseline']}' in the same "
            "run",
            "| variant | train img/s | × | peak MiB | IW img·samples/s | × | sample img/s | × | "
            "Δbpd |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            lines.append(
                f"| {r['variant']} | {r['train_images_per_s']:.1f} | "
                f"{r['train_images_speedup']:.2f} | "
                f"{r['train_peak_bytes'] / 2**20:.0f} | "
                f"{_num(r['iw_image_samples_per_s'], '.1f')} | "
                f"{_num(r['iw_image_samples_speedup'], '.2f')} | "
                f"{_num(r['sample_images_per_s'], '.1f')} | "
                f"{_num(r['sample_images_speedup'], '.2f')} | {r['max_abs_bpd_diff']:.1e} |"
                + ("" if r["train_losses_finite"] else " **non-finite training losses** |")
                + (
                    " **evaluation and sampling ran eagerly: capture failed** |"
                    if r.get("eval_graphs_captured") is False
                    else ""
                )
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="benchmark the paper config (32×32 batch 64 and 64×64 batch 32) "
        "instead of the CPU config",
    )
    p.add_argument(
        "--preset", default="small", help="config preset for the CPU-sized run (default: small)"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--variants",
        default="eager,channels_last,bf16,channels_last+bf16",
        help=f"comma-separated, first is the baseline; from {', '.join(VARIANTS)}",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds; medians are reported"
    )
    p.add_argument("--iw-samples", type=int, default=20, help="k for the IW-bound throughput")
    p.add_argument("--iw-chunk", type=int, default=10)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--eval-iters", type=int, default=5)
    p.add_argument("--json", default=None, help="write the report as JSON here")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    device = torch.device(args.device)
    if device.type != "cuda" and set(variants) & set(GPU_ONLY):
        p.error(f"the variants {sorted(set(variants) & set(GPU_ONLY))} need a CUDA device")
    if device.type != "cpu" and set(variants) & set(CPU_ONLY):
        p.error(
            f"the variants {sorted(set(variants) & set(CPU_ONLY))} split a CPU's cores "
            "between processes; for several GPUs, train under torchrun"
        )
    if args.paper:
        setups = [
            Setup("paper 32×32", DenseFlowConfig.paper(32), 64),
            Setup("paper 64×64", DenseFlowConfig.paper(64), 32),
        ]
    else:
        setups = [
            Setup(
                f"{args.preset} {args.image_size}×{args.image_size}",
                DenseFlowConfig.preset(args.preset, args.image_size),
                args.batch_size,
            )
        ]
    report = run(setups, variants, device, args)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
