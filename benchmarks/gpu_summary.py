"""The figures of a ``benchmarks/gpu_check.sh`` run, as Markdown for docs/performance.md.

    python benchmarks/gpu_summary.py gpu_check/          # prints, and writes gpu_check/summary.md

From what the run left in its folder (any part may be missing: a short loan skips the last ones):

* each benchmark's table (``benchmark_*.json``): training images/s, peak memory, IW evaluation
  image·samples/s and sampling images/s, with each variant's ratio to the eager path of the same
  run, and the peak memory of training, IW evaluation and sampling per variant;
* each Trainer run (``train_*/metrics.jsonl``) against the benchmark row of its speed switches:
  its images/s over the log windows without an epoch end (the steady state), over those with one
  (the checkpoint written then), and over the whole run, the first window left out (it holds the
  CUDA-graph capture or the compilation);
* the checkpoint's stall (``checkpoint_stall.json``): the synchronous save against the
  background writer's copy;
* the time of the paper's CIFAR-10 evaluation (10,000 test images, k = 1000 importance samples)
  at the best IW rate the 32×32 benchmark measured (the target: under an hour on one H100), and
  the rate of the CLI evaluation (``eval_iw.json``, timed by the script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmark import table

CIFAR10_TEST_IMAGES, CIFAR10_IW_SAMPLES = 10_000, 1000


def read_events(path: Path) -> list[dict]:
    """The events of a metrics.jsonl (a line cut short by a stopped run is left out)."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def variant_of(config: dict) -> str:
    """The benchmark variant with a training config's speed switches."""
    parts = ["compile"] if config.get("compile") else []
    parts += ["graph"] if config.get("cuda_graphs") else []
    parts += ["channels_last"] if config.get("channels_last") else []
    parts += ["bf16"] if config.get("amp") == "bf16" else []
    return "+".join(parts) or "eager"


def trainer_rates(events: list[dict]) -> dict:
    """Images/s of a Trainer run from its log windows (each ``train`` event covers the steps
    since the one before): the median over windows without an epoch end, the median over those
    with one, and the whole run's rate (images over seconds); the first window is left out."""
    start = next(e for e in events if e["event"] == "start")
    batch = start["config"]["batch_size"] * start.get("world_size", 1)
    epoch_ends = {e["step"] for e in events if e["event"] == "epoch"}
    steady, with_end, images, seconds = [], [], 0.0, 0.0
    previous = None
    for e in (e for e in events if e["event"] == "train"):
        if previous is not None:  # the first window: capture or compilation
            steps = e["step"] - previous
            window_images = steps * batch
            images += window_images
            seconds += window_images / e["images_per_s"]
            ends = any(previous < s <= e["step"] for s in epoch_ends)
            (with_end if ends else steady).append(e["images_per_s"])
        previous = e["step"]

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "variant": variant_of(start["config"]),
        "steady": median(steady),
        "with_epoch_end": median(with_end),
        "overall": images / seconds if seconds else None,
        "windows": (len(steady), len(with_end)),
    }


def benchmark_rows(out: Path) -> dict[tuple[str, str], dict]:
    """``(setup name, variant) -> row`` of every benchmark report in ``out``."""
    rows = {}
    for path in sorted(out.glob("benchmark_*.json")):
        report = json.loads(path.read_text())
        for setup in report["setups"]:
            for row in setup["rows"]:
                rows.setdefault((setup["name"], row["variant"]), row)
    return rows


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def summary(out: Path) -> str:
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "?"
    lines = [f"# GPU check on {device}", ""]
    reports = sorted(out.glob("benchmark_*.json"))
    for path in reports:
        lines += [f"## {path.stem}", "", table(json.loads(path.read_text())), ""]
    rows = benchmark_rows(out)
    if rows:
        lines += [
            "## Peak memory (MiB above what was allocated before the part)",
            "",
            "| setup | variant | training | IW evaluation | sampling |",
            "|---|---|---|---|---|",
        ]
        for (name, variant), row in rows.items():
            peaks = [row.get(f"{part}_peak_bytes") for part in ("train", "iw", "sample")]
            shown = [_fmt(None if p is None or p != p else p / 2**20, ".0f") for p in peaks]
            lines.append(f"| {name} | {variant} | " + " | ".join(shown) + " |")
        lines.append("")
    runs = sorted(out.glob("train_*/metrics.jsonl"))
    if runs:
        lines += [
            "## The Trainer against the benchmark (32×32, batch 64)",
            "",
            "| run | variant | img/s, steady | img/s, epoch end | img/s, overall | benchmark "
            "img/s | steady / benchmark |",
            "|---|---|---|---|---|---|---|",
        ]
        for path in runs:
            rates = trainer_rates(read_events(path))
            bench = next(
                (row["train_images_per_s"] for (name, variant), row in rows.items()
                 if name.endswith("32×32") and variant == rates["variant"]),
                None,
            )  # fmt: skip
            ratio = rates["steady"] / bench if bench and rates["steady"] else None
            lines.append(
                f"| {path.parent.name} | {rates['variant']} | {_fmt(rates['steady'])} | "
                f"{_fmt(rates['with_epoch_end'])} | {_fmt(rates['overall'])} | {_fmt(bench)} | "
                f"{_fmt(ratio, '.3f')} |"
            )
        lines.append("")
    iw = [
        (row["iw_image_samples_per_s"], name, variant)
        for (name, variant), row in rows.items()
        if name.endswith("32×32") and row["iw_image_samples_per_s"] == row["iw_image_samples_per_s"]
    ]
    if iw:
        rate, name, variant = max(iw)
        hours = CIFAR10_TEST_IMAGES * CIFAR10_IW_SAMPLES / rate / 3600
        lines += [
            "## CIFAR-10's evaluation, k = 1000",
            "",
            f"At {rate:.0f} image·samples/s ({name}, {variant}): {hours:.2f} h for the "
            f"{CIFAR10_TEST_IMAGES:,} test images.",
            "",
        ]
    if (out / "checkpoint_stall.json").exists():
        stall = json.loads((out / "checkpoint_stall.json").read_text())
        lines += [
            f"## The checkpoint's stall ({stall['preset']} model, "
            f"{stall['checkpoint_bytes'] / 2**20:.0f} MiB)",
            "",
            f"Synchronous save {stall['sync_median_s']:.3f} s; the background writer holds the "
            f"loop {stall['stall_median_s']:.3f} s ({stall['stall_ratio']:.2f}×), the file in "
            f"place after {stall['written_median_s']:.3f} s (medians of {stall['rounds']} "
            "alternating rounds).",
        ]
        if "steps" in stall:
            lines.append(
                f"{stall['steps']} training steps: {stall['steps_without_s']:.3f} s alone, "
                f"{stall['steps_during_write_s']:.3f} s beside a write."
            )
        lines.append("")
    if (out / "eval_iw.json").exists() and (out / "eval_iw.seconds").exists():
        result = json.loads((out / "eval_iw.json").read_text())
        seconds = float((out / "eval_iw.seconds").read_text())
        done = result["n_images"] * result["iw_samples"]
        lines += [
            f"Through the CLI (`densflow eval`, start-up and model loading included): "
            f"{result['n_images']} images × k = {result['iw_samples']} in {seconds:.0f} s, "
            f"{done / seconds:.0f} image·samples/s; bits/dim {result['bpd_iw']:.4f} (IW), "
            f"{result['bpd_single']:.4f} (single sample).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="the folder gpu_check.sh wrote")
    args = p.parse_args(argv)
    if not args.out_dir.is_dir():
        print(f"error: {args.out_dir} is not a folder; give the OUT_DIR of gpu_check.sh",
              file=sys.stderr)  # fmt: skip
        return 2
    text = summary(args.out_dir)
    (args.out_dir / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
