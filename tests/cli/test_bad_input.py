"""Bad input never costs work: every mistake a user can make on the command line or at the Python
API ends in one clear line (exit status 2) or a ``ValueError`` naming the argument, and no file
is changed, lost or left behind.

Each command-line row runs ``main`` in a copy of a folder of small files (tiny checkpoints, a
non-finite one, random bytes, an official run folder), hashed before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from utils import assert_one_line, run_cli, snapshot, write_official_run

from densflow import reproduce
from densflow.cli import build_parser, main, train_config_from_args
from densflow.config import DenseFlowConfig
from densflow.evaluation import evaluate
from densflow.io import files as io_files
from densflow.io import locate
from densflow.io.checkpoint import FORMAT, CheckpointError, save_model
from densflow.io.pretrained import CACHE_ENV, save_pretrained
from densflow.model import DenseFlow
from densflow.training.optim import build_optimizer, optimizer_state_dict
from densflow.training.state import TrainingState, save_training_checkpoint
from densflow.utils.ranges import RANGES
from densflow.utils.testing import write_celeba
from densflow.utils.validate import check_float, check_int

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(image_size: int = 32, seed: int = 0) -> DenseFlow:
    torch.manual_seed(seed)
    return DenseFlow(DenseFlowConfig.tiny(image_size=image_size)).eval()


class CallsSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


TRAIN = ["train", "--preset", "smoke", "--max-steps", "2", "--no-progress"]


def damaged_runs(root: Path) -> None:
    """Run folders whose checkpoint of ``TRAIN`` is damaged inside, one way each."""
    config = train_config_from_args(build_parser().parse_args(TRAIN))
    model = DenseFlow(config.architecture(32))
    optimizer = optimizer_state_dict(build_optimizer(model, config.optimizer, config.lr))
    state = TrainingState(2, 0, 2, 0, torch.zeros((), dtype=torch.float64), 2, 0, 1)
    path = root / "good_run" / "checkpoint.pt"
    path.parent.mkdir()
    save_training_checkpoint(
        path, model, train_config=config.to_dict(), optimizer=optimizer, state=state
    )
    good = torch.load(path, weights_only=True)
    damage = {
        "no_step": {**good, "progress": {k: v for k, v in good["progress"].items() if k != "step"}},
        "bad_rng": {**good, "rng": {"torch": torch.zeros(10, dtype=torch.uint8), "cuda": None}},
        "config_list": {**good, "config": [1, 2]},
        "misshaped": {**good, "model": {**good["model"], "prior.loc": torch.zeros(1, 2, 3)}},
        "optimizer_list": {**good, "optimizer": [1]},
    }
    for name, ckpt in damage.items():
        (root / name).mkdir()
        torch.save(ckpt, root / name / "checkpoint.pt")
    for run in ("good_run", *damage):
        (root / run / ".lock").touch()  # as every run leaves it


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference_dir) -> Path:
    """The folder every command-line row starts from (relative paths inside it)."""
    root = tmp_path_factory.mktemp("files")
    photos = {"dataset": "photos"}
    save_model(tiny(), root / "m.pt", train_config=photos)  # the photos are 32×32
    save_model(tiny(16), root / "m16.pt", train_config=photos)
    nan = tiny()
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    save_model(nan, root / "nan.pt", train_config=photos)
    huge = tiny()
    with torch.no_grad():
        for p in huge.parameters():
            p.mul_(1e30)  # finite weights, whose flow overflows: an all-black grid if not refused
    save_model(huge, root / "huge.pt", train_config=photos)
    ckpt = torch.load(root / "m.pt", weights_only=True)
    torch.save({**ckpt, "version": 99}, root / "newer.pt")
    torch.save({**ckpt, "config": [1, 2]}, root / "config_list.pt")
    torch.save({**ckpt, "model": {**ckpt["model"], "prior.loc": torch.zeros(3)}}, root / "bad.pt")
    torch.save({**ckpt, "x": CallsSystem()}, root / "evil.pt")
    torch.save({**ckpt, "args": argparse.Namespace(lr=1)}, root / "namespace.pt")
    (root / "random.pt").write_bytes(bytes(range(256)) * 8)
    (root / "notes.txt").write_text("my notes, not a progress file\n")
    golden = torch.load(reference_dir / "golden_A.pt", weights_only=True)
    write_official_run(root / "run", golden)
    (root / "imagenet").mkdir()
    (root / "imagenet" / "val_data.npz").write_bytes(b"the validation images")
    save_pretrained(tiny(), root / "cache" / "models" / "cifar10", dataset="cifar10")
    os.symlink("m.pt", root / "alias.png")
    # a user's files whose names look like densflow's temporaries: never touched
    (root / ".m.pt.0123abcd.tmp").write_text("mine")
    (root / "cache" / ".weights.unpack-1-0123abcd").mkdir()
    (root / "cache" / ".weights.unpack-1-0123abcd" / "notes.txt").write_text("mine")
    damaged_runs(root)
    # CelebA folders with one image, or the partition list, that is no image file
    for name in ("celeba_fifo", "celeba_table_fifo", "celeba_huge"):
        write_celeba(root / name, n_images=3)
    Image.new("RGB", (5000, 5000)).save(root / "celeba_huge" / "celeba" / "img_align_celeba" /
                                        "000001.jpg")  # fmt: skip
    (root / "deep.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    # run folders and a cache whose staging folder is a user's, named like densflow's: cleanup
    # touches only what densflow made (its marker), so these are refused, never emptied
    for folder in ("foreign_run", "foreign_cache"):
        (root / folder / ".densflow-tmp").mkdir(parents=True)
        (root / folder / ".densflow-tmp" / "precious.txt").write_text("mine")
        (root / folder / ".lock").touch()  # as every run and every download leaves it
    # a model directory and a checkpoint whose stored config asks for a width of 1e7
    save_pretrained(tiny(), root / "wide", dataset="photos")
    config = json.loads((root / "wide" / "config.json").read_text())
    (root / "wide" / "config.json").write_text(json.dumps({**config, "mid_channels": [10**7] * 3}))
    torch.save({**ckpt, "config": {**ckpt["config"], "growth_rate": 10**6}}, root / "wide.pt")
    # 4 steps at lr 10 (the warm-up reaches 4): finite weights whose loss is no longer finite
    lr10 = ["train", "--preset", "smoke", "--lr", "10", "--max-steps", "4", "--no-progress"]
    assert main([*lr10, "--out-dir", str(root / "lr10")]) == 0
    return root


@pytest.fixture
def workdir(files, tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(files, work, symlinks=True)
    os.mkfifo(work / "fifo")  # nobody reads it
    os.link(work / "m.pt", work / "hard.png")  # copytree makes separate files of hard links
    for path in ("celeba_fifo/celeba/img_align_celeba/000001.jpg",
                 "celeba_table_fifo/celeba/list_eval_partition.txt"):  # fmt: skip
        (work / path).unlink()
        os.mkfifo(work / path)  # nobody writes it: opening it to read would wait for ever
    monkeypatch.chdir(work)
    monkeypatch.setenv(CACHE_ENV, str(work / "cache"))
    return work


CUDA = torch.cuda.is_available()
EVAL = ["eval", "m.pt", "--limit", "4", "--batch-size", "4", "--device", "cpu"]
SAMPLE = ["sample", "m.pt", "--out", "s.png", "--n", "2", "--device", "cpu"]

# (argv, the one line's pattern): each must exit 2 and leave every file as it was.
CLI_ROWS = {
    # an output that is an input, or cannot be written
    "eval --partial is the checkpoint": (
        [*EVAL, "--partial", "m.pt"],
        r"--partial m\.pt is also an input .* write to another path",
    ),
    "eval --partial is not a progress file": (
        [*EVAL, "--partial", "notes.txt"],
        r"notes\.txt exists and is not an evaluation progress file.*another partial_path",
    ),
    "eval --partial is the --out": (
        [*EVAL, "--out", "r.json", "--partial", "r.json"],
        r"--partial r\.json is also an input",
    ),
    "eval --out is the checkpoint": ([*EVAL, "--out", "m.pt"], r"--out m\.pt is also an input"),
    "eval --out is a folder": ([*EVAL, "--out", "run"], r"--out run is a folder; give a file"),
    "eval --out under a file": (
        [*EVAL, "--out", "notes.txt/r.json"],
        r"cannot write into notes\.txt .*writable folder",
    ),
    "eval --out is the official checkpoint": (
        ["eval", "run", "--out", "run/check/checkpoint.pt"],
        r"also an input",
    ),
    "eval --out is a data file": (
        [
            *EVAL[:2],
            "--dataset",
            "imagenet32",
            "--data-dir",
            "imagenet",
            "--out",
            "imagenet/val_data.npz",
        ],
        r"--out imagenet/val_data\.npz is also an input of this command \(a file of the dataset "
        r"folder imagenet\)",
    ),
    "eval --partial is a data file": (
        [*EVAL, "--data-dir", "imagenet", "--partial", "imagenet/val_data.npz"],
        r"--partial imagenet/val_data\.npz is also an input",
    ),
    "sample --out is the cached model's weights": (
        ["sample", "cifar10", "--out", "cache/models/cifar10/model.safetensors"],
        r"--out cache/models/cifar10/model\.safetensors is also an input",
    ),
    "sample --out is the cached model's config": (
        ["sample", "cifar10", "--out", "cache/models/cifar10/config.json"],
        r"also an input",
    ),
    "sample --out is a hard link to the checkpoint": (
        ["sample", "m.pt", "--out", "hard.png"],
        r"--out hard\.png is also an input",
    ),
    "sample --out is a symbolic link to the checkpoint": (
        ["sample", "m.pt", "--out", "alias.png"],
        r"--out alias\.png is also an input",
    ),
    "train --out-dir holds its own --init-from": (
        [*TRAIN, "--out-dir", "good_run", "--init-from", "good_run/checkpoint.pt"],
        r"--out-dir good_run/checkpoint\.pt is also an input",
    ),
    "download weights --from inside the cache": (
        ["download", "weights", "--from", "cache/models"],
        r"--from cache/models lies inside the cache",
    ),
    "sample --out is the checkpoint": (
        ["sample", "m.pt", "--out", "m.pt"],
        r"--out m\.pt is also an input",
    ),
    "convert into its own checkpoint": (
        ["convert", "run", "run/check/checkpoint.pt"],
        r"OUT run/check/checkpoint\.pt is also an input",
    ),
    "convert into its own args.pickle": (["convert", "run", "run/args.pickle"], r"also an input"),
    "convert --format pretrained onto its run folder": (
        ["convert", "run", "run", "--format", "pretrained"],
        r"OUT run is also an input",
    ),
    # cleanup that would touch a user's files
    "train into a run folder whose staging folder is a user's": (
        [*TRAIN, "--out-dir", "foreign_run"],
        r"foreign_run/\.densflow-tmp exists but was not made by densflow .*rename it",
    ),
    "download weights into a cache whose staging folder is a user's": (
        ["download", "weights", "--from", "run", "--cache-dir", "foreign_cache"],
        r"foreign_cache\S*/\.densflow-tmp exists but was not made by densflow .*rename it",
    ),
    # impossible numbers
    "ablate --timing-steps -1": (
        ["ablate", "--preset", "smoke", "--timing-steps", "-1"],
        r"--timing-steps: must be an integer in \[0, 10000\], got -1",
    ),
    "ablate --steps 0": (
        ["ablate", "--preset", "smoke", "--steps", "0"],
        r"--steps: must be an integer in \[1, \d+\], got 0",
    ),
    "ablate --seeds x": (
        ["ablate", "--preset", "smoke", "--seeds", "0", "x"],
        r"--seeds: must be an integer in \[0, 18446744073709551615\], got 'x'",
    ),
    "sample --temperature nan": (
        [*SAMPLE, "--temperature", "nan"],
        r"--temperature: must be a finite number >= 0\.0 and <= 1000\.0, got nan",
    ),
    "sample --temperature inf": (
        [*SAMPLE, "--temperature", "inf"],
        r"finite number >= 0\.0 and <= 1000\.0, got inf",
    ),
    "sample --temperature -1": ([*SAMPLE, "--temperature", "-1"], r"got -1\.0"),
    "sample --temperature abc": ([*SAMPLE, "--temperature", "abc"], r"got 'abc'"),
    "sample --n 0": ([*SAMPLE, "--n", "0"], r"--n: must be an integer in \[1, 16384\], got 0"),
    "sample --nrow 0": ([*SAMPLE, "--nrow", "0"], r"--nrow: must be an integer in \[1, 1024\]"),
    "eval --iw-samples 0": (
        [*EVAL, "--iw-samples", "0"],
        r"--iw-samples: must be an integer in \[1, 1048576\]",
    ),
    "eval --iw-samples 2.5": ([*EVAL, "--iw-samples", "2.5"], r"got '2\.5'"),
    "eval --chunk-size 0": (
        [*EVAL, "--chunk-size", "0"],
        r"--chunk-size: must be an integer in \[1, 65536\]",
    ),
    "eval --limit 0": ([*EVAL, "--limit", "0"], r"--limit: .* in \[1, \d+\], got 0"),
    "eval --limit -3": ([*EVAL, "--limit", "-3"], r"got -3"),
    "eval --iw-samples 1e12": ([*EVAL, "--iw-samples", str(10**12)], r"in \[1, 1048576\]"),
    "sample --n 10**9": ([*SAMPLE, "--n", str(10**9)], r"--n: must be an integer in \[1, 16384\]"),
    "eval --save-interval-s -1": ([*EVAL, "--save-interval-s", "-1"], r"got -1\.0"),
    "eval --batch-size 0": (
        [*EVAL, "--batch-size", "0"],
        r"--batch-size: must be an integer in \[1, 65536\]",
    ),
    "eval --num-workers -1": ([*EVAL, "--num-workers", "-1"], r"--num-workers: .* in \[0, 1024\]"),
    "eval --seed -1": (
        [*EVAL, "--seed", "-1"],
        r"--seed: must be an integer in \[0, 18446744073709551615\]",
    ),
    "sample --seed 2**64": (
        [*SAMPLE, "--seed", str(2**64)],
        r"--seed: must be an integer in \[0, ",
    ),
    "eval --compile --cuda-graphs": (
        [*EVAL, "--compile", "--cuda-graphs"],
        r"choose one of compile and cuda_graphs \(--compile, --cuda-graphs\): a capture of",
    ),
    "sample --compile --cuda-graphs": (
        [*SAMPLE, "--compile", "--cuda-graphs"],
        r"choose one of compile and cuda_graphs",
    ),
    "convert --image-size 0": (["convert", "run", "o.pt", "--image-size", "0"], r"got 0"),
    # models that cannot be used, with the real reason
    "eval random bytes": (
        ["eval", "random.pt", "--dataset", "photos"],
        r"random\.pt is not a checkpoint \(neither a zip archive nor a pickle",
    ),
    "convert random bytes": (
        ["convert", "random.pt", "o.pt"],
        r"random\.pt is not a checkpoint \(neither a zip archive nor a pickle",
    ),
    "convert a densflow checkpoint": (
        ["convert", "m.pt", "o.pt"],
        r"m\.pt is a densflow checkpoint already, not an official one",
    ),
    "eval a typo with a suffix": (["eval", "checkpont.pt"], r"^error: checkpont\.pt: no such file"),
    "eval a typo with a slash": (
        ["eval", "runs/checkpont.pt"],
        r"^error: runs/checkpont\.pt: no such file or folder$",
    ),
    "sample a typo in an existing folder": (
        ["sample", "run/checkpont", "--out", "s.png"],
        r"^error: run/checkpont: no such file or folder$",
    ),
    "sample a name not in the cache": (
        ["sample", "celeba", "--out", "s.png"],
        r"no model 'celeba' in the cache .*\['cifar10'\]\): run densflow download weights",
    ),
    "sample a FIFO as the model": (["sample", "fifo", "--out", "s.png"], r"not a regular file"),
    "data check: a FIFO where a CelebA image should be": (
        ["data", "check", "celeba", "--data-dir", "celeba_fifo"],
        r"^error: celeba: malformed file \S+/000001\.jpg: is a FIFO, not an image file$",
    ),
    "data check: a FIFO as CelebA's partition list": (
        ["data", "check", "celeba", "--data-dir", "celeba_table_fifo"],
        r"list_eval_partition\.txt: is a FIFO, not the partition list$",
    ),
    "data check: a 25-megapixel image": (
        ["data", "check", "celeba", "--data-dir", "celeba_huge"],
        r"000001\.jpg: has 5000×5000 pixels, more than the 16,777,216 densflow decodes",
    ),
    "eval on a CelebA folder with a 25-megapixel image": (
        ["eval", "m.pt", "--dataset", "celeba", "--data-dir", "celeba_huge", "--split", "train"],
        r"000001\.jpg: has 5000×5000 pixels",
    ),
    "train --model-config nested too deeply": (
        [*TRAIN, "--out-dir", "new_run", "--model-config", "deep.json"],
        r"--model-config: deep\.json is nested too deeply to be a DenseFlowConfig;",
    ),
    "eval a model directory whose config.json asks for a width of 1e7": (
        ["eval", "wide", "--limit", "2"],
        r"wide/config\.json: its config is no valid DenseFlowConfig: mid_channels\[0\] must be an "
        r"integer in \[1, 4096\], got 10000000",
    ),
    "sample a checkpoint whose config asks for a growth rate of 1e6": (
        ["sample", "wide.pt", "--out", "s.png"],
        r"wide\.pt: its config is no valid DenseFlowConfig: growth_rate must be an integer in "
        r"\[0, 1024\], got 1000000",
    ),
    "train --model-config is a FIFO": (
        [*TRAIN, "--out-dir", "new_run", "--model-config", "fifo"],
        r"--model-config: fifo is not a regular file \(a FIFO\)",
    ),
    "train --model-config with a width of 1e7": (
        [*TRAIN, "--out-dir", "new_run", "--model-config", '{"mid_channels": [10000000, 8, 8]}'],
        r"mid_channels\[0\] must be an integer in \[1, 4096\], got 10000000",
    ),
    "eval --partial is a FIFO": (
        [*EVAL, "--partial", "fifo"],
        r"--partial fifo is not a regular file; it is read back and replaced",
    ),
    "eval --partial is a device": ([*EVAL, "--partial", "/dev/null"], r"not a regular file"),
    "sample into a FIFO nobody reads": (
        ["sample", "m.pt", "--out", "fifo", "--n", "1"],
        r"cannot write fifo: No such device or address; fifo was not replaced",
    ),
    "eval a pickle that calls a system function": (
        ["eval", "evil.pt"],
        r"evil\.pt is not a checkpoint densflow loads: loading it would call posix\.system",
    ),
    "convert a pickle that calls a system function": (
        ["convert", "evil.pt", "o.pt"],
        r"loading it would call posix\.system, .*densflow never runs it",
    ),
    "eval a pickle of plain data beyond weights_only": (
        ["eval", "namespace.pt"],
        r"argparse\.Namespace.*If it comes from a source you trust, convert it",
    ),
    "eval a config that is a list": (["eval", "config_list.pt"], r"'config' entry is a list"),
    "eval a mis-shaped tensor": (["eval", "bad.pt"], r"mis-shaped: prior\.loc \(3,\) instead of"),
    "resume from progress without step": (
        [*TRAIN, "--out-dir", "no_step"],
        r"no_step/checkpoint\.pt is damaged: progress has no step; it cannot be resumed",
    ),
    "resume from a bad RNG state": (
        [*TRAIN, "--out-dir", "bad_rng"],
        r"is damaged: its torch generator state has shape \(10,\)",
    ),
    "resume from a config that is a list": (
        [*TRAIN, "--out-dir", "config_list"],
        r"config_list/checkpoint\.pt: its 'config' entry is a list",
    ),
    "resume from a mis-shaped tensor": (
        [*TRAIN, "--out-dir", "misshaped"],
        r"misshaped/checkpoint\.pt: the weights do not fit .*mis-shaped: prior\.loc \(1, 2, 3\)",
    ),
    "resume from an optimizer that is a list": (
        [*TRAIN, "--out-dir", "optimizer_list"],
        r"is damaged: its optimizer is a list, not a dict",
    ),
    "download weights from a file that is no archive": (
        ["download", "weights", "--from", "random.pt"],
        r"--from random\.pt is neither a zip nor a tar archive nor a folder",
    ),
    "eval a newer checkpoint version": (
        ["eval", "newer.pt"],
        r"newer\.pt has densflow checkpoint version 99, .* update densflow",
    ),
    "eval a model of another image size": (
        ["eval", "m16.pt", "--limit", "4"],
        r"the model is for \(3, 16, 16\) images, photos test has \(3, 32, 32\); .*--dataset",
    ),
    "eval --device nonsense": ([*EVAL[:-1], "nonsense"], r"--device 'nonsense' is not a device"),
    # outputs that are not numbers: refused in one line, nothing written
    "eval non-finite weights": (
        ["eval", "nan.pt", "--limit", "4"],
        r"bits/dim are not finite \(NaN or inf\) for 4 of 4 images .*evaluate an earlier",
    ),
    "eval non-finite weights, --out": (
        ["eval", "nan.pt", "--limit", "4", "--out", "r.json"],
        r"bits/dim are not finite .* 4 of 4 images",
    ),
    "eval huge weights, --out and --iw-samples": (
        ["eval", "huge.pt", "--limit", "3", "--iw-samples", "2", "--out", "r.json"],
        r"bits/dim are not finite \(NaN or inf\) for 3 of 3 images \(the first: image 0\)",
    ),
    "eval huge weights, --iw-samples only": (
        ["eval", "huge.pt", "--limit", "2", "--iw-samples", "2", "--no-single"],
        r"bits/dim are not finite .* 2 of 2 images",
    ),
    "sample non-finite weights": (
        ["sample", "nan.pt", "--n", "4", "--out", "s.png"],
        r"the model.s weights are not finite \(\d+ tensors hold NaN or inf, .*before training "
        r"diverged",
    ),
    "sample huge weights": (
        ["sample", "huge.pt", "--n", "4", "--out", "s.png"],
        r"^error: 4 of 4 samples are not finite \(NaN or inf\), so the grid would be black",
    ),
    "sample a checkpoint whose loss is no longer finite": (
        ["sample", "lr10/checkpoint.pt", "--n", "4", "--out", "s.png"],
        r"^error: 4 of 4 samples lie far outside the image range .*sample from an earlier",
    ),
    "sample a checkpoint whose loss is no longer finite, one sample": (
        ["sample", "lr10", "--n", "1", "--out", "s.png", "--seed", "3"],
        r"^error: 1 of 1 samples lie far outside the image range",
    ),
    "sample huge weights, bf16": (
        ["sample", "huge.pt", "--n", "3", "--out", "s.png", "--amp", "bf16", "--seed", "5"],
        r"3 of 3 samples are not finite .*sample from an earlier checkpoint",
    ),
}
if not CUDA:
    CLI_ROWS["sample --device cuda without CUDA"] = (
        [*SAMPLE[:-1], "cuda"],
        r"--device 'cuda' asked for, but CUDA is not available on this machine; use --device cpu",
    )


@pytest.mark.parametrize("argv, pattern", CLI_ROWS.values(), ids=CLI_ROWS.keys())
def test_a_bad_command_is_one_line_status_2_and_changes_no_file(argv, pattern, workdir, capsys):
    before = snapshot(workdir)
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert_one_line(err, pattern)
    assert "trust_checkpoint" not in err  # an unsafe option, and one the CLI does not have
    if "system function" in " ".join(argv) or "posix.system" in err:
        assert "trust" not in err  # never advised for a file that would run code
    assert snapshot(workdir) == before  # nothing changed, lost or left behind


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["data", "check", "cifar10", "--data-dir", "nowhere"], "nowhere does not exist"),
        (["data", "check", "cifar10", "--data-dir", "notes.txt"], "is a file, not a directory"),
        ([*EVAL, "--dataset", "cifar10"], "no data_dir given"),
    ],
)
def test_missing_data_is_status_2_with_what_to_get(argv, reason, workdir, capsys):
    # The data errors are one "error:" line followed by indented lines listing what was
    # expected, found and where to get it.
    before = snapshot(workdir)
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and "Traceback" not in err
    assert err.startswith("error: cifar10: ") and reason in err and "get it: " in err
    assert snapshot(workdir) == before


@pytest.mark.parametrize("how", ["chmod", "refused"])
def test_eval_into_a_read_only_folder_fails_before_the_work(how, workdir, capsys, monkeypatch):
    if how == "chmod" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (workdir / "locked").mkdir()
    if how == "chmod":
        (workdir / "locked").chmod(0o555)
    else:  # the file system refuses new files, as a read-only mount does even for root

        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr("tempfile.TemporaryFile", refuse)
    monkeypatch.setattr("densflow.evaluation.evaluate", pytest.fail)  # never reached
    status, _, err = run_cli([*EVAL, "--out", "locked/r.json"], capsys)
    assert status == 2
    assert_one_line(err, r"cannot write into locked .*writable folder")
    assert list((workdir / "locked").iterdir()) == []


def test_under_torchrun_each_process_s_progress_file_is_checked_before_the_work(
    workdir, capsys, monkeypatch
):
    # Rank 1 of 2 keeps its progress in r.json.partial.rank1: here a link to the checkpoint.
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    Path("r.json.partial.rank1").symlink_to("m.pt")
    monkeypatch.setattr("densflow.evaluation.evaluate", pytest.fail)  # never reached
    before = snapshot(workdir)
    status, _, err = run_cli([*EVAL, "--out", "r.json"], capsys)
    assert status == 2
    assert_one_line(err, r"--partial r\.json\.partial\.rank1 is also an input of this command")
    assert snapshot(workdir) == before


def test_non_finite_results_print_nothing_and_keep_no_progress(workdir, capsys):
    status = main(["eval", "huge.pt", "--limit", "4", "--out", "r.json", "--save-interval-s", "0"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""  # no JSON: nothing that looks like a result
    assert_one_line(captured.err, r"not finite")
    assert not Path("r.json").exists() and not Path("r.json.partial").exists()


def test_ctrl_c_during_eval_keeps_the_progress_and_the_same_command_resumes(
    workdir, capsys, monkeypatch
):
    argv = ["eval", "m.pt", "--limit", "8", "--batch-size", "2", "--out", "r.json"]
    assert main([*argv[:-2]]) == 0
    reference = json.loads(capsys.readouterr().out)

    real, calls = DenseFlow.log_prob, []

    def interrupted(self, x, generator=None, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # in the third batch: two are done
            raise KeyboardInterrupt
        return real(self, x, generator, **kwargs)

    monkeypatch.setattr(DenseFlow, "log_prob", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == "interrupted; the partial file r.json.partial lets the same command resume\n"
    progress = torch.load("r.json.partial", weights_only=True)
    assert progress["start"] == 0 and progress["single"].shape == (4,)
    assert not Path("r.json").exists()

    monkeypatch.setattr(DenseFlow, "log_prob", real)
    assert main(argv) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed == reference  # bit-identical to an uninterrupted run
    assert not Path("r.json.partial").exists()


def test_ctrl_c_during_sample_writes_nothing(workdir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DenseFlow, "sample_continuous", interrupted)
    before = snapshot(workdir)
    assert main(SAMPLE) == 130
    assert capsys.readouterr().err == "interrupted; s.png was not written\n"
    assert snapshot(workdir) == before


FULL_DISK = {  # each writes its output last; the disk is full then
    "eval --out": [*EVAL, "--out", "r.json"],
    "sample --out": [*SAMPLE],
    "convert to a checkpoint": ["convert", "run", "o.pt"],
    "convert to a model directory": ["convert", "run", "o", "--format", "pretrained"],
    "convert over an existing file": ["convert", "run", "notes.txt"],
}


@pytest.mark.parametrize("argv", FULL_DISK.values(), ids=FULL_DISK.keys())
def test_a_full_disk_is_one_line_status_2_and_keeps_every_file(argv, workdir, capsys, monkeypatch):
    def full(self, data):
        self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise self.error

    monkeypatch.setattr(io_files._Sink, "write", full)
    before = snapshot(workdir)
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert_one_line(err, r"^error: cannot write \S+: No space left on device; .*free disk space")
    assert "delete" not in err
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k != "o"} == before  # at most an empty folder


def test_outputs_that_are_devices_are_written_through(workdir, capsys):
    assert main([*SAMPLE[:3], "/dev/null", *SAMPLE[4:]]) == 0
    assert main([*EVAL, "--out", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a regular file


def test_atomically_written_outputs_get_the_mode_open_gives(workdir, capsys):
    old = os.umask(0o022)
    try:
        assert main(SAMPLE) == 0
        assert main(["convert", "run", "o", "--format", "pretrained"]) == 0
    finally:
        os.umask(old)
    for path in ("s.png", "o/config.json", "o/model.safetensors"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_a_bug_is_status_1_and_debug_shows_the_traceback(workdir, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("densflow.evaluation.evaluate", bug)
    status, _, err = run_cli(EVAL, capsys)
    assert status == 1
    assert_one_line(err, r"unexpected ZeroDivisionError: .*rerun with --debug for the traceback")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *EVAL])
    monkeypatch.setenv("DENSFLOW_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(EVAL)


@pytest.mark.slow
def test_a_real_process_prints_no_traceback(workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DENSFLOW_DEBUG", None)
    before = snapshot(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "densflow", "eval", "random.pt", "--dataset", "photos"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert_one_line(proc.stderr, r"random\.pt is not a checkpoint")
    assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- the Python API

INT_FIELDS = [f.name for f in dataclasses.fields(DenseFlowConfig) if f.type in ("int", int)]


@pytest.mark.parametrize("value", [0, -1, 2.5, float("nan"), True, "4", "above"])
@pytest.mark.parametrize("field", [f for f in INT_FIELDS if f != "num_bits"])
def test_every_numeric_config_field_is_checked_against_the_ranges_table(field, value):
    rng = RANGES["DenseFlowConfig"][field]  # growth 0: couplings that append no channels
    value = rng.high + 1 if value == "above" else value  # e.g. a width of 4097: refused at once
    if value == rng.low and not isinstance(value, bool):
        DenseFlowConfig.tiny(**{field: value})
        return
    pattern = rf"^{field} must be an integer in \[{rng.low}, {rng.high}\], got .*; set "
    with pytest.raises(ValueError, match=pattern + rf"DenseFlowConfig\.{field} to e\.g\. \d+$"):
        DenseFlowConfig.tiny(**{field: value})


@pytest.mark.parametrize("field", ["block_config", "layers_config", "mid_channels"])
@pytest.mark.parametrize("value", [0, 10**7])
def test_per_block_lists_are_checked(field, value):
    with pytest.raises(
        ValueError, match=rf"^{field}\[1\] must be an integer in \[1, \d+\], got {value}"
    ):
        DenseFlowConfig.tiny(**{field: (2, value, 1)})


def test_more_dense_blocks_than_halvings_make_sense_are_refused():
    with pytest.raises(ValueError, match=r"^block_config must have 1 to 8 dense blocks .*got 9$"):
        DenseFlowConfig.tiny(block_config=(1,) * 9, layers_config=(1,) * 9, mid_channels=(8,) * 9)


@pytest.fixture(scope="module")
def model() -> DenseFlow:
    return tiny(16)


IMAGES = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
API_ROWS = {
    "iw_log_prob k=2.5": (
        lambda m: m.iw_log_prob(IMAGES, 2.5),
        r"^k must be an integer >= 1, got 2\.5",
    ),
    "iw_log_prob k=0": (lambda m: m.iw_log_prob(IMAGES, 0), r"^k must be an integer >= 1, got 0"),
    "iw_log_prob chunk_size=0": (lambda m: m.iw_log_prob(IMAGES, 2, 0), r"^chunk_size must be"),
    "sample(-1)": (lambda m: m.sample(-1), r"^n must be an integer >= 1, got -1"),
    "sample(0)": (lambda m: m.sample(0), r"^n must be an integer >= 1, got 0"),
    "sample temperature nan": (
        lambda m: m.sample(1, float("nan")),
        r"^temperature must be a finite number >= 0\.0, got nan",
    ),
    "sample temperature inf": (lambda m: m.sample(1, float("inf")), r"^temperature .* got inf"),
    "sample temperature -0.5": (lambda m: m.sample(1, -0.5), r"^temperature .* got -0\.5"),
    "log_prob of an empty batch": (lambda m: m.log_prob(IMAGES[:0]), r"^x is an empty batch"),
    "iw_log_prob of an empty batch": (lambda m: m.iw_log_prob(IMAGES[:0], 2), r"empty batch"),
    "evaluate batch_size=0": (
        lambda m: evaluate(m, TensorDataset(IMAGES), batch_size=0),
        r"^batch_size must be",
    ),
    "evaluate iw_samples=0": (
        lambda m: evaluate(m, TensorDataset(IMAGES), iw_samples=0),
        r"^iw_samples must be",
    ),
    "evaluate chunk_size=0": (
        lambda m: evaluate(m, TensorDataset(IMAGES), iw_samples=2, chunk_size=0),
        r"^chunk_size must be",
    ),
    "evaluate an empty dataset": (
        lambda m: evaluate(m, TensorDataset(IMAGES[:0])),
        r"^dataset is empty",
    ),
    "evaluate a generator": (
        lambda m: evaluate(m, TensorDataset(IMAGES), generator=torch.Generator()),
        r"^unknown evaluation settings \['generator'\]",
    ),
}


@pytest.mark.parametrize("call, pattern", API_ROWS.values(), ids=API_ROWS.keys())
def test_the_api_refuses_impossible_values_naming_the_argument(call, pattern, model):
    with pytest.raises(ValueError, match=pattern):
        call(model)


def test_sampling_at_temperature_0_is_allowed(model):
    assert model.sample(1, 0.0, torch.Generator().manual_seed(0)).shape == (1, 3, 16, 16)


def test_evaluate_refuses_a_partial_path_that_is_not_its_progress_file(model, tmp_path):
    for name, content in [("model.pt", None), ("notes.txt", b"notes")]:
        target = tmp_path / name
        if content is None:
            save_model(model, target)
        else:
            target.write_bytes(content)
        before = target.read_bytes()
        with pytest.raises(ValueError, match="is not an evaluation progress file"):
            evaluate(model, TensorDataset(IMAGES), progress=False, partial_path=target)
        assert target.read_bytes() == before


def test_loading_reports_the_real_reason(files):
    with pytest.raises(CheckpointError, match="is not a checkpoint") as info:
        locate(files / "random.pt").load()
    assert "trust_checkpoint" not in str(info.value)
    with pytest.raises(CheckpointError, match="version 99") as info:
        locate(files / "newer.pt").load()
    assert "official" not in str(info.value)
    ckpt = torch.load(files / "m.pt", weights_only=True)
    bad = files.parent / "badconfig.pt"
    torch.save({**ckpt, "config": {**ckpt["config"], "num_landmarks": 0}}, bad)
    with pytest.raises(CheckpointError, match=r"num_landmarks must be an integer in \[1, 4096\]"):
        locate(bad).load()
    assert ckpt["format"] == FORMAT
    model, dataset = locate(files / "m.pt").load()  # and a good one still loads
    assert dataset == "photos" and model.config.image_size == 32


def test_the_validate_helpers():
    assert check_int("n", 3) == 3 and check_int("w", 0, minimum=0) == 0
    for bad in (0, 1.0, True, "2", None):
        with pytest.raises(ValueError, match="^n must be an integer >= 1"):
            check_int("n", bad)
    with pytest.raises(ValueError, match=r"in \[1, 4\]"):
        check_int("n", 5, maximum=4)
    assert check_float("lr", 1e-3, minimum=0.0, exclusive=True) == 1e-3
    for bad in (0.0, float("nan"), float("inf"), -1.0, "1e-3"):
        with pytest.raises(ValueError, match="^lr must be a finite number > 0.0"):
            check_float("lr", bad, minimum=0.0, exclusive=True)
    with pytest.raises(ValueError, match="<= 1.0"):
        check_float("p", 1.5, minimum=0.0, maximum=1.0)


MEMORY = {  # (where memory runs out, the command): the model of the requested size, a batch
    "torch.OutOfMemoryError building the model for train": (
        "densflow.training.trainer.DenseFlow.__init__", [*TRAIN, "--out-dir", "new_run"],
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB"),
    ),
    "MemoryError loading the model for eval": (
        "densflow.io.resolve.ModelSource.load", EVAL, MemoryError(),
    ),
    "the CPU allocator refusing for sample": (
        "densflow.evaluation.sampling.IndexedDraws.next", SAMPLE,
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                     "memory: you tried to allocate 600000000000000 bytes"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("target, argv, error", MEMORY.values(), ids=MEMORY.keys())
def test_running_out_of_memory_is_status_2_with_the_cause(target, argv, error, workdir, capsys,
                                                          monkeypatch):  # fmt: skip
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, out_of_memory)
    before = snapshot(workdir)
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert_one_line(
        err,
        r"^error: out of memory for the requested size \(.*\); use a smaller "
        r"--batch-size, --chunk-size or --n, --device cpu, or a machine with more",
    )
    assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- papermill parameters

# What papermill passes to a reproduction notebook is what the user typed (-p NAME VALUE): each is
# refused by reproduce() as the command line refuses it, before the data is read or a file written.
PAPERMILL_ROWS = {
    "temperature=nan": ({"temperature": float("nan")}, r"^temperature must be a finite number"),
    "temperature=-1": ({"temperature": -1.0}, r"^temperature must be .*got -1\.0; set"),
    "iw_samples=0": ({"iw_samples": 0}, r"^iw_samples must be an integer in \[1, \d+\], got 0"),
    "iw_samples=2.5": ({"iw_samples": 2.5}, r"^iw_samples must be an integer .*got 2\.5"),
    "resume='no'": ({"resume": "no"}, r"^resume must be True or False, got 'no'"),
    "channels_last='False'": ({"channels_last": "False"}, r"^channels_last must be True or Fal"),
    "epochs='3'": ({"epochs": "3"}, r"^epochs must be an integer in \[0, \d+\], got '3'"),
    "seed=-1": ({"seed": -1}, r"^seed must be an integer in \[0, \d+\], got -1; set --seed"),
    "batch_size=10**9": ({"batch_size": 10**9}, r"^batch_size must be an integer in \[1, 65536\]"),
    "a typo: epoch=3": ({"epoch": 3}, r"^unknown reproduction setting 'epoch'; did you mean ep"),
    "compile and cuda_graphs": (
        {"compile": True, "cuda_graphs": True}, r"^choose one of compile and cuda_graphs",
    ),
    "out_dir holds the model": (
        {"out_dir": "good_run", "checkpoint": "good_run/checkpoint.pt"},
        r"^out_dir good_run/checkpoint\.pt is also an input",
    ),
}  # fmt: skip


@pytest.mark.parametrize("parameters, pattern", PAPERMILL_ROWS.values(), ids=PAPERMILL_ROWS.keys())
def test_a_bad_notebook_parameter_is_one_line_before_any_work(parameters, pattern, workdir):
    before = snapshot(workdir)
    parameters = {"out_dir": "new_run", **parameters}
    with pytest.raises(ValueError, match=pattern) as refused:
        reproduce.reproduce("photos", "smoke", **parameters)
    assert "\n" not in str(refused.value)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_huge_sparse_data_file_is_refused_before_any_allocation(split, workdir, capsys,
                                                                  tmp_path_factory):  # fmt: skip
    # 200 GB of holes where an ImageNet32 batch file should be: its size is no count of images
    data = tmp_path_factory.mktemp("sparse")  # outside workdir: the snapshot would read it
    names = ["val_data"] + [f"train_data_batch_{i}" for i in range(1, 11)]
    for name in names:
        with open(data / name, "wb") as f:
            f.truncate(200 * 2**30)
    argv = ["eval", "m.pt", "--dataset", "imagenet32", "--data-dir", str(data), "--split", split]
    before = snapshot(workdir)
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert_one_line(err, r"^error: imagenet32: malformed file \S+: not a complete pickle")
    assert snapshot(workdir) == before
