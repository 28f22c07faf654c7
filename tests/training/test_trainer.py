"""Training: exact resume, atomic checkpoints, non-finite steps, the schedule, presets, and a
smoke run on real photos."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from utils import assert_same_training_state, tiny_run

from densflow import DenseFlowConfig, performance
from densflow.data import DATASETS, load_dataset
from densflow.evaluation import evaluate
from densflow.io import load
from densflow.io.checkpoint import CheckpointError, read_checkpoint
from densflow.io.locks import LOCK_NAME
from densflow.training import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TRAIN_PRESETS,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    epoch_permutation,
    learning_rate,
    optim,
    read_metrics,
    shard_indices,
    train,
    train_preset,
)
from densflow.training import step as step_module

pytestmark = pytest.mark.usefixtures("one_thread")


def image_sets(n_train: int = 24, n_test: int = 8) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 16, 16), dtype=torch.uint8, generator=g)
    return TensorDataset(x[:n_train]), TensorDataset(x[n_train:])


SETS = image_sets()  # 24 train images, batch 4: 6 steps per epoch


def config(out_dir, **overrides) -> TrainConfig:
    return tiny_run(out_dir, **{"gamma": 0.5, **overrides})


def run(cfg: TrainConfig, patch=None) -> Trainer:
    trainer = Trainer(cfg, train_set=SETS[0], test_set=SETS[1])
    if patch is not None:
        patch(trainer)
    trainer.fit()
    return trainer


def assert_same_state(a: Trainer, b: Trainer) -> None:
    assert_same_training_state(
        a.model.state_dict(),
        a.optimizer.state_dict()["state"],
        b.model.state_dict(),
        b.optimizer.state_dict()["state"],
    )


def series(out_dir) -> list[tuple]:
    """Everything logged but the wall-clock values."""
    drop = {"time", "images_per_s", "elapsed_s", "config", "resumed"}
    return [
        tuple(sorted((k, v) for k, v in e.items() if k not in drop))
        for e in read_metrics(out_dir)
        if e["event"] not in ("start", "end")
    ]


def nan_at(steps: set[int]):
    """A patch: the loss of the given steps (1-based) becomes NaN after a real forward pass
    (so that BatchNorm statistics are touched and must be restored)."""

    def patch(trainer: Trainer) -> None:
        real = trainer.model.log_prob

        def log_prob(x, generator=None, **kwargs):
            out = real(x, generator, **kwargs)
            return out * math.nan if trainer.model.training and trainer.step + 1 in steps else out

        trainer.model.log_prob = log_prob

    return patch


def test_cuda_graphs_on_a_cpu_train_exactly_as_without(tmp_path):
    # Without CUDA the graphed step runs eagerly: the same draws, the same gradients (its own
    # zeroing, none by the Trainer), so the same run to the bit.
    plain = run(config(tmp_path / "plain", max_steps=4))
    with pytest.warns(RuntimeWarning, match="cuda_graphs needs a CUDA device"):
        graphed = run(config(tmp_path / "graphed", max_steps=4, cuda_graphs=True))
    assert_same_state(plain, graphed)
    assert series(tmp_path / "plain") == series(tmp_path / "graphed")
    with pytest.raises(ValueError, match="choose one of compile and cuda_graphs"):
        config(tmp_path / "both", compile=True, cuda_graphs=True)


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    "n, extra",
    [
        (2, {}),  # inside the first epoch
        (4, {"eval_every": 1}),  # 4 + 4 steps cross the end of epoch 0 (6 steps) and its evaluation
    ],
)
def test_n_steps_resume_n_steps_equals_2n_steps(tmp_path, n, extra):
    full = run(config(tmp_path / "full", max_steps=2 * n, **extra))
    run(config(tmp_path / "split", max_steps=n, **extra))
    resumed = run(config(tmp_path / "split", max_steps=2 * n, **extra))
    assert resumed.step == full.step == 2 * n
    assert_same_state(full, resumed)
    assert series(tmp_path / "full") == series(tmp_path / "split")
    cfg = full.config
    for e in read_metrics(tmp_path / "full"):
        if e["event"] == "train":  # the rate used by step e["step"] (1-based)
            assert e["lr"] == learning_rate(cfg, e["step"] - 1, e["epoch"])


def test_a_crash_while_writing_keeps_the_previous_checkpoint_and_resume_is_exact(
    tmp_path, monkeypatch
):
    reference = run(config(tmp_path / "ref", max_steps=6, checkpoint_every=2))
    real_save, calls = torch.save, []

    def torn_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        run(config(tmp_path / "crash", max_steps=6, checkpoint_every=2))
    monkeypatch.undo()
    path = tmp_path / "crash" / CHECKPOINT_NAME
    assert read_checkpoint(path)["progress"]["step"] == 2
    load(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        LOCK_NAME,
        CHECKPOINT_NAME,
        METRICS_NAME,
    ]

    resumed = run(config(tmp_path / "crash", max_steps=6, checkpoint_every=2))
    assert_same_state(reference, resumed)
    assert series(tmp_path / "ref") == series(tmp_path / "crash")  # steps 3-4 not logged twice


def test_resume_refuses_another_configuration(tmp_path):
    run(config(tmp_path, max_steps=1))
    with pytest.raises(CheckpointError, match="lr: 0.001 in the checkpoint, 0.002 now"):
        Trainer(config(tmp_path, max_steps=2, lr=2e-3), train_set=SETS[0])
    with pytest.raises(CheckpointError, match="resume is off"):
        Trainer(config(tmp_path, resume=False), train_set=SETS[0])


# ----------------------------------------------------------------------------- non-finite losses


def test_a_non_finite_step_is_skipped_without_any_change(tmp_path):
    before = run(config(tmp_path, max_steps=3))
    after = run(config(tmp_path, max_steps=4), patch=nan_at({4}))
    assert after.step == 4
    assert_same_state(before, after)  # parameters, BatchNorm statistics and Adamax state
    events = [e for e in read_metrics(tmp_path) if e["step"] == 4 and e["event"] != "end"]
    assert [e["event"] for e in events] == ["nonfinite", "train"]
    assert events[1]["bpd"] is None and events[1]["nonfinite"] == 1


def test_too_many_non_finite_steps_stop_with_the_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, max_nonfinite=3, checkpoint_every=2)
    holder = {}

    def patch(trainer):
        holder["trainer"] = trainer
        nan_at({6, 7, 8, 9})(trainer)

    # Step 6's loss was NaN: its save is skipped, and step 4's checkpoint (whose model had a
    # finite loss at step 5) stays the last good one.
    with pytest.raises(
        TrainingDivergedError,
        match=r"at step 8: 3 non-finite losses in a row "
        r"\(steps 6\.\.8.*the last good checkpoint is .*checkpoint\.pt \(step 4\)",
    ):
        run(cfg, patch=patch)
    ckpt = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["progress"]["step"] == 4 and ckpt["progress"]["nonfinite_run"] == 0
    model = load(tmp_path / CHECKPOINT_NAME)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not any(torch.equal(x, y) for x, y in zip(
        model.state_dict().values(), holder["trainer"].model.state_dict().values(), strict=True
    ) if x.is_floating_point() and x.numel() > 1)  # fmt: skip
    assert read_metrics(tmp_path)[-1]["event"] == "diverged"


# ----------------------------------------------------------------------------- schedule and data


def test_learning_rate_schedules():
    paper = TrainConfig(lr=1e-3, warmup_steps=10, gamma=0.9, epochs=3, finetune_epochs=2)
    assert learning_rate(paper, 0, 0) == 0.0  # the official warm-up starts at 0
    assert learning_rate(paper, 5, 0) == pytest.approx(5e-4)
    assert learning_rate(paper, 5, 1) == pytest.approx(5e-4 * 0.9)  # decay applies in warm-up too
    assert learning_rate(paper, 10, 0) == pytest.approx(1e-3)
    assert learning_rate(paper, 99, 2) == pytest.approx(1e-3 * 0.81)
    assert learning_rate(paper, 100, 3) == learning_rate(paper, 999, 4) == 2e-5  # fine-tuning
    official = paper.replace(schedule="official_constant")
    assert learning_rate(official, 5, 1) == pytest.approx(5e-4)
    assert learning_rate(official, 99, 2) == 1e-3
    assert learning_rate(official, 100, 3) == 2e-5
    assert learning_rate(paper.replace(warmup_steps=0), 0, 1) == pytest.approx(9e-4)


def test_data_order_and_sharding():
    a, b = epoch_permutation(50, 0, 3), epoch_permutation(50, 0, 3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_permutation(50, 0, 4))
    assert not torch.equal(a, epoch_permutation(50, 1, 3))
    shards = [shard_indices(a, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [16, 16, 16]
    assert sorted(torch.cat(shards).tolist()) == sorted(a[:48].tolist())
    with pytest.raises(ValueError):
        shard_indices(a, 3, 3)


def test_presets_follow_the_paper():
    table = {
        "cifar10": (580, 70, 64, 0.9975),
        "imagenet32": (20, 2, 64, 0.95),
        "imagenet64": (10, 1, 32, 0.95),
        "celeba": (50, 5, 32, 0.95),
    }
    for name, (epochs, finetune, batch, gamma) in table.items():
        cfg = train_preset(name, "paper")
        assert (cfg.epochs, cfg.finetune_epochs, cfg.batch_size, cfg.gamma) == (
            epochs,
            finetune,
            batch,
            gamma,
        )
        assert (cfg.lr, cfg.finetune_lr, cfg.warmup_steps, cfg.optimizer, cfg.schedule) == (
            1e-3,
            2e-5,
            5000,
            "adamax",
            "paper",
        )
        size = DATASETS[name].image_size
        assert cfg.architecture(size) == DenseFlowConfig.paper(size)
    official = train_preset("cifar10", "official")
    assert (official.epochs, official.finetune_epochs, official.schedule) == (
        400,
        20,
        "official_constant",
    )
    assert set(TRAIN_PRESETS["smoke"]) == set(DATASETS)
    assert train_preset("photos", "quickstart").architecture(32) == DenseFlowConfig.small(32)
    assert train_preset("celeba", "smoke", batch_size=2).batch_size == 2
    with pytest.raises(ValueError, match="no settings for 'cifar10'"):
        train_preset("cifar10", "quickstart")


def test_config_validation_and_round_trip():
    cfg = TrainConfig(model_config=DenseFlowConfig.tiny(), amp="bf16", grad_clip=1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 65536\]"):
        TrainConfig(batch_size=0)


def test_read_metrics_ignores_a_torn_last_line(tmp_path):
    (tmp_path / METRICS_NAME).write_text('{"event": "train", "step": 1}\n{"event": "tr')
    assert read_metrics(tmp_path) == [{"event": "train", "step": 1}]
    assert read_metrics(tmp_path / "nothing") == []


@pytest.mark.parametrize("options", [{"amp": "bf16"}, {"channels_last": True, "grad_clip": 0.5}])
def test_training_options_run(tmp_path, options):
    result = train(config(tmp_path, max_steps=2, **options), train_set=SETS[0])
    assert result.step == 2 and result.train_bpd is not None and math.isfinite(result.train_bpd)


@pytest.mark.compile
def test_compiled_training_follows_eager_training_and_resumes_either_way(tmp_path, monkeypatch):
    # The aot_eager backend runs dynamo and AOTAutograd's forward/backward graphs without code
    # generation: the Trainer's wiring is tested here in seconds; inductor's numbers are tested
    # in tests/performance/test_compile.py.
    compiled = []

    def compile_model(model):
        compiled.extend(performance.compile_model(model, backend="aot_eager"))

    def compile_optimizer(optimizer):
        compiled.append(type(optimizer).__name__)
        return optim.compile_optimizer(optimizer, backend="aot_eager")

    monkeypatch.setattr(step_module, "compile_model", compile_model)
    monkeypatch.setattr(step_module, "compile_optimizer", compile_optimizer)
    eager = run(config(tmp_path / "eager", max_steps=4))
    run(config(tmp_path / "compiled", max_steps=2, compile=True))
    assert compiled == ["terms_from_noise", "sample_from_noise", "Adamax"]
    resumed = run(config(tmp_path / "compiled", max_steps=4))  # the second half eagerly
    for (name, x), y in zip(
        eager.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), name


# ----------------------------------------------------------------------------- earlier checkpoints

RUN_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"  # see its README.md


def test_a_run_written_by_the_earlier_code_loads_and_resumes(tmp_path):
    model = load(RUN_V1 / CHECKPOINT_NAME)
    assert model.config == DenseFlowConfig.tiny(32)
    run_dir = tmp_path / "resumed"
    shutil.copytree(RUN_V1, run_dir)
    settings = dict(progress=False, max_steps=4)
    resumed = Trainer(train_preset("photos", "smoke", out_dir=str(run_dir), **settings))
    assert (resumed.step, resumed.epoch, resumed.step_in_epoch) == (2, 0, 2)
    for name, x in model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], x), name
    resumed.fit()
    reference = Trainer(train_preset("photos", "smoke", out_dir=str(tmp_path / "ref"), **settings))
    reference.fit()
    assert resumed.step == reference.step == 4
    # Equal up to rounding: the first two steps ran in the earlier code.
    for (name, x), y in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-6), name
    # The log is cut back to what the checkpoint had seen (its "end" line came after it).
    events = [(e["event"], e["step"]) for e in read_metrics(run_dir)]
    assert events == [("start", 0), ("start", 2), ("end", 4)]
    assert read_checkpoint(run_dir / CHECKPOINT_NAME)["progress"]["step"] == 4


# ----------------------------------------------------------------------------- defaults


def test_the_defaults_train_on_photos_and_are_the_quickstart_preset():
    cfg = TrainConfig()
    quick = train_preset("photos", "quickstart", out_dir=cfg.out_dir)
    assert quick.replace(eval_limit=None) == cfg
    steps_per_epoch = len(load_dataset("photos", None, "train")) // cfg.batch_size
    # Past half the peak rate within the first epoch, the warm-up over within the second, and the
    # rate still near the peak in the last one.
    assert learning_rate(cfg, steps_per_epoch - 1, 0) > 0.5 * cfg.lr
    assert learning_rate(cfg, 2 * steps_per_epoch - 1, 1) == pytest.approx(cfg.lr * cfg.gamma)
    assert learning_rate(cfg, cfg.epochs * steps_per_epoch - 1, cfg.epochs - 1) > 0.8 * cfg.lr


# ----------------------------------------------------------------------------- a real smoke run


@pytest.mark.slow
def test_two_epochs_on_photos_lower_the_test_bpd(tmp_path):
    cfg = train_preset(
        "photos",
        "smoke",
        out_dir=str(tmp_path),
        progress=False,
        epochs=2,
        finetune_epochs=0,
        steps_per_epoch=15,
        warmup_steps=5,
        eval_limit=64,
    )
    test = torch.utils.data.Subset(load_dataset("photos", None, "test"), range(64))
    untrained = train(cfg.replace(max_steps=1))  # step 1 has lr 0: ActNorm-initialised, untrained
    before = evaluate(untrained.model, test, batch_size=16, seed=0, progress=False).bpd_single
    result = train(cfg)
    after = evaluate(result.model, test, batch_size=16, seed=0, progress=False).bpd_single
    assert result.completed and result.step == 30
    assert after < before - 0.2, (before, after)
    evals = [e["test_bpd"] for e in read_metrics(tmp_path) if e["event"] == "eval"]
    assert len(evals) == 2 and evals[1] < evals[0]


def test_the_quickstart_preset_is_the_trainconfig_defaults_on_256_test_patches():
    # Its settings are not restated: a change of a TrainConfig default changes the quickstart.
    preset = train_preset("photos", "quickstart").to_dict()
    defaults = TrainConfig().to_dict()
    assert {k for k in preset if preset[k] != defaults[k]} == {"out_dir", "eval_limit"}
    assert preset["eval_limit"] == 256 and preset["model"] == "small"


def test_a_stored_training_config_of_an_earlier_version_is_read_in_today_s_names():
    from densflow.training.state import current_train_config

    stored = {**train_preset("cifar10", "paper").to_dict(), "model": "paper"}
    stored["iw_chunk_size"], stored["pin_memory"] = stored.pop("chunk_size") // 2, True
    config = TrainConfig.from_dict(current_train_config(stored))
    assert config.model == "denseflow-74-10" and config.chunk_size == 25
    assert config == train_preset("cifar10", "paper", chunk_size=25)
    with pytest.raises(ValueError, match=r"model must be one of .*got 'paper'"):
        TrainConfig(model="paper")  # the old name is the reader's, not the API's
