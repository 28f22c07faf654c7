"""What drawing each image's noise from its own generator costs an evaluation.

``densflow.evaluation.evaluate`` draws image i's noise from generators seeded by (seed, i), one
call per image and block of 50 importance samples, so that its numbers depend on the seed alone
(docs/evaluation.md). Drawing a whole batch from one generator takes one call per noise site
instead, but ties each image's numbers to the batch, chunk and process count. This times both,
in the same run, the variants interleaved (A B A B …) and the median kept:

* ``per_image`` — ``evaluate(model, images, batch_size=, iw_samples=, chunk_size=)``;
* ``one_generator`` — the same batches, bounds and bits/dim, each batch's noise drawn from one
  generator (``DenseFlow.log_prob`` and ``DenseFlow.iw_log_prob`` with ``generator=``).

    python benchmarks/eval_draws.py                       # small model, 32×32, on the CPU
    python benchmarks/eval_draws.py --device cuda --images 512 --batch-size 64 --iw-samples 100 \\
        --chunk-size 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim
from densflow.evaluation import evaluate
from densflow.utils.runtime import collate_images, resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_generator(model: DenseFlow, data: TensorDataset, args: argparse.Namespace) -> None:
    """The bounds of every batch, each batch's draws from one generator."""
    device = model.prior.loc.device
    g = torch.Generator(device).manual_seed(0)
    loader = DataLoader(data, batch_size=args.batch_size, collate_fn=collate_images)
    with torch.no_grad():
        for x in loader:
            x = x.to(device)
            bits_per_dim(model.log_prob(x, g), model.image_shape).double().cpu()
            log_p = model.iw_log_prob(x, args.iw_samples, args.chunk_size, g)
            bits_per_dim(log_p, model.image_shape).double().cpu()


def per_image(model: DenseFlow, data: TensorDataset, args: argparse.Namespace) -> None:
    evaluate(model, data, batch_size=args.batch_size, iw_samples=args.iw_samples,
             chunk_size=args.chunk_size, seed=0, progress=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small", help="DenseFlowConfig preset (default: small)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iw-samples", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the report to this file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = DenseFlow(DenseFlowConfig.preset(args.model, args.image_size)).to(device)
    x = torch.randint(0, 256, (args.images, 3, args.image_size, args.image_size),
                      dtype=torch.uint8, generator=torch.Generator().manual_seed(1))  # fmt: skip
    with torch.no_grad():
        model.train()(x[: args.batch_size].to(device), torch.Generator(device).manual_seed(2))
    model.eval()
    data = TensorDataset(x)
    variants = {"one_generator": one_generator, "per_image": per_image}
    for fn in variants.values():  # warm-up: allocations, kernels, the first DataLoader
        fn(model, TensorDataset(x[: args.batch_size]), args)
    times: dict[str, dict[str, list[float]]] = {v: {"wall_s": [], "cpu_s": []} for v in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn(model, data, args)
            sync(device)
            times[name]["wall_s"].append(time.perf_counter() - wall)
            times[name]["cpu_s"].append(time.process_time() - cpu)
    medians = {v: {k: statistics.median(t) for k, t in m.items()} for v, m in times.items()}
    report = {
        "device": str(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "median": medians,
        "per_image_over_one_generator": {
            k: medians["per_image"][k] / medians["one_generator"][k] for k in ("wall_s", "cpu_s")
        },
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
