"""How long a training checkpoint holds the training loop: the synchronous write against the
background writer, in the same run.

    python benchmarks/checkpoint_stall.py                        # small model, on the CPU
    python benchmarks/checkpoint_stall.py --preset paper --device cuda --json stall.json

The baseline is ``save_training_checkpoint`` (build the checkpoint, check it is finite, write it
atomically: what the Trainer did before its saves went to the background); the variant is
``CheckpointWriter.save`` (copy to the host, check, hand to the writer's thread), whose stall is
what the loop waits for. The two alternate for ``--rounds`` rounds and the medians are kept, so a
noisy machine hits both. With ``--steps N``, N training steps run while each background write is in
flight and again after it, so the cost of a write on the steps beside it shows too (on a CPU with
no core to spare, the write takes its time from those steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchmark import device_name, sync  # benchmarks/benchmark.py, beside this script

from densflow import DenseFlow, DenseFlowConfig
from densflow.training.checkpoint_writer import CheckpointWriter
from densflow.training.optim import build_optimizer, optimizer_state_dict
from densflow.training.state import TrainingState, save_training_checkpoint, training_checkpoint
from densflow.training.step import TrainStep


def measure(preset: str, device: torch.device, rounds: int, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = DenseFlow(DenseFlowConfig.preset(preset, 32)).to(device).train()
    g = torch.Generator(device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    with torch.no_grad():
        model(x, generator=g)  # data-dependent ActNorm init
    optimizer = build_optimizer(model, "adamax", 1e-4)
    step = TrainStep(model, optimizer)

    def train(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            step(x, model.draw_noise(batch, g), 1e-4)
        sync(device)
        return time.perf_counter() - start

    train(1)  # the optimizer's state exists from here on: the checkpoint has its final size
    state = TrainingState(
        step=1, epoch=0, step_in_epoch=1, nonfinite_run=0,
        epoch_sum=torch.zeros((), dtype=torch.float64, device=device), epoch_count=1,
        metrics_bytes=0, world_size=1,
    )  # fmt: skip
    parts = {"train_config": {}, "state": state}
    writer = CheckpointWriter()
    sync_s, stall_s, written_s, during, without = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        for r in range(rounds):
            for kind in ("sync", "background") if r % 2 == 0 else ("background", "sync"):
                sync(device)
                start = time.perf_counter()
                if kind == "sync":
                    save_training_checkpoint(
                        path, model, optimizer=optimizer_state_dict(optimizer), **parts
                    )
                    sync_s.append(time.perf_counter() - start)
                    continue
                checkpoint = training_checkpoint(
                    model, optimizer=optimizer_state_dict(optimizer), **parts
                )
                writer.save(path, 1, checkpoint)
                stall_s.append(time.perf_counter() - start)
                if steps:
                    during.append(train(steps))
                writer.wait()
                written_s.append(time.perf_counter() - start)
            if steps:
                without.append(train(steps))
        size = path.stat().st_size
    med = statistics.median
    out = {
        "preset": preset,
        "device": device_name(device),
        "torch": torch.__version__,
        "checkpoint_bytes": size,
        "rounds": rounds,
        "sync_s": sync_s,
        "stall_s": stall_s,
        "written_s": written_s,
        "sync_median_s": med(sync_s),
        "stall_median_s": med(stall_s),
        "written_median_s": med(written_s),
        "stall_ratio": med(stall_s) / med(sync_s),
    }
    if steps:
        out |= {"steps": steps, "steps_during_write_s": med(during),
                "steps_without_s": med(without)}  # fmt: skip
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="model preset (default: small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    p.add_argument("--steps", type=int, default=0, help="training steps beside each write")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 0 or args.batch_size < 1:
        p.error("--rounds and --batch-size must be at least 1, --steps at least 0")
    out = measure(args.preset, torch.device(args.device), args.rounds, args.steps, args.batch_size)
    print(
        f"{out['preset']} on {out['device']}: checkpoint {out['checkpoint_bytes'] / 2**20:.0f} "
        f"MiB; synchronous save {out['sync_median_s']:.3f} s, background stall "
        f"{out['stall_median_s']:.3f} s ({out['stall_ratio']:.2f}×), written after "
        f"{out['written_median_s']:.3f} s",
        file=sys.stderr,
    )
    if args.steps:
        print(
            f"  {args.steps} steps: {out['steps_without_s']:.3f} s alone, "
            f"{out['steps_during_write_s']:.3f} s beside a write",
            file=sys.stderr,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
