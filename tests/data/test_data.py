"""Tests of densflow.data on tiny fixtures in the real on-disk formats (densflow.utils.testing)."""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densflow import data
from densflow.data import (
    DATASETS,
    AllowList,
    Augmentation,
    DatasetError,
    DatasetFormatError,
    DatasetInfo,
    DatasetNotFoundError,
    ImageTensorDataset,
    augmentation_for,
    check_dataset,
    download,
    downloadable,
    image_shape,
    load_dataset,
    paper_datasets,
    paper_table1,
    restricted_unpickle,
)
from densflow.utils.testing import write_celeba, write_cifar10, write_imagenet

CIFAR_URL = "cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def stack(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    return torch.stack([dataset[i] for i in range(len(dataset))])


# ----------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert set(DATASETS) == {"cifar10", "imagenet32", "imagenet64", "celeba", "photos"}
    assert [image_shape(n) for n in DATASETS] == [(3, 32, 32)] * 2 + [(3, 64, 64)] * 2 + [
        (3, 32, 32)
    ]
    assert DATASETS["cifar10"].train_size == 50_000 and DATASETS["imagenet64"].test_size == 50_000
    assert DATASETS["celeba"].valid_size == 19_867 and DATASETS["imagenet32"].manual_download
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["cifar10"].image_size = 64  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown dataset"):
        image_shape("mnist")


def test_paper_augmentations() -> None:
    assert augmentation_for("cifar10") == Augmentation(flip=True, shift=1)
    assert augmentation_for("imagenet32") == Augmentation(flip=True, shift=1)
    assert augmentation_for("imagenet64") == Augmentation(flip=True, shift=3)
    assert augmentation_for("celeba") == Augmentation(flip=True, shift=0)
    assert augmentation_for("photos") == Augmentation(flip=True, shift=1)


def test_paper_facts() -> None:
    # Table 1 (test bits/dim, k), the reported training cost, and Appendix C's protocol.
    table = paper_table1()
    assert list(table) == ["DenseFlow-74-10", "VFlow", "Flow++", "Glow"]
    assert table["DenseFlow-74-10"] == {
        "cifar10": 2.98,
        "imagenet32": 3.63,
        "imagenet64": 3.35,
        "celeba": 1.99,
    }
    assert table["Glow"] == {
        "cifar10": 3.35,
        "imagenet32": 4.09,
        "imagenet64": 3.81,
        "celeba": None,
    }
    assert table["VFlow"]["imagenet64"] == 3.66 and table["Flow++"]["imagenet32"] == 3.86
    assert {n: d.paper.iw_samples for n, d in paper_datasets().items()} == {
        "cifar10": 1000,
        "imagenet32": 200,
        "imagenet64": 200,
        "celeba": 200,
    }
    assert DATASETS["photos"].paper is None and DATASETS["photos"].protocol is None
    assert "2 weeks" in DATASETS["imagenet64"].paper.cost
    epochs = {
        n: (d.protocol.epochs, d.protocol.finetune_epochs) for n, d in paper_datasets().items()
    }
    assert epochs == {
        "cifar10": (580, 70),
        "imagenet32": (20, 2),
        "imagenet64": (10, 1),
        "celeba": (50, 5),
    }
    assert [d.protocol.batch_size for d in paper_datasets().values()] == [64, 64, 32, 32]
    assert [d.protocol.gamma for d in paper_datasets().values()] == [0.9975, 0.95, 0.95, 0.95]
    cifar = DATASETS["cifar10"].protocol.train_fields()
    assert cifar == dict(
        epochs=580,
        finetune_epochs=70,
        batch_size=64,
        gamma=0.9975,
        lr=1e-3,
        finetune_lr=2e-5,
        warmup_steps=5000,
        optimizer="adamax",
        eval_every=10,
    )
    official = DATASETS["cifar10"].protocol.train_fields(official=True)
    assert official == {**cifar, "epochs": 400, "finetune_epochs": 20}
    celeba = DATASETS["celeba"].protocol
    assert celeba.train_fields(official=True) == celeba.train_fields()


def test_facts_elsewhere_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from densflow import reproduce
    from densflow.evaluation import paper_iw_samples
    from densflow.io import official

    assert official.IMAGE_SIZES == {"cifar10": 32, "imagenet32": 32, "imagenet64": 64, "celeba": 64}
    assert {name: paper_iw_samples(name) for name in paper_datasets()} == {
        "cifar10": 1000,
        "imagenet32": 200,
        "imagenet64": 200,
        "celeba": 200,
    }
    assert reproduce.PAPER_RESULTS == paper_table1()
    assert reproduce.PAPER_COST["cifar10"] == "about 250 GPU-hours (one RTX 3090)"
    assert set(reproduce.PAPER_COST) == set(paper_datasets())


def test_a_new_dataset_is_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Everything dispatches on the registry entry: a dataset with its own format functions works
    with every entry point, without any other change."""
    images = torch.arange(5 * 3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8)
    fetched: list[Path] = []

    def load(info, root, split, options):
        assert root == tmp_path and options.patch_stride == 16
        return ImageTensorDataset(images.view(5, 3, 8, 8)[: 3 if split == "train" else 2])

    def check(info, root, splits):
        return {s: 3 if s == "train" else 2 for s in splits}, f"toys in {root}"

    toy = DatasetInfo(
        name="toy",
        image_size=8,
        train_size=3,
        test_size=2,
        files=("toy.bin",),
        layout="one file",
        source="nowhere",
        augmentation=Augmentation(flip=False, shift=2),
        load=load,
        check=check,
        download=fetched.append,
    )
    monkeypatch.setitem(DATASETS, "toy", toy)
    assert image_shape("toy") == (3, 8, 8) and augmentation_for("toy").shift == 2
    assert torch.equal(load_dataset("toy", tmp_path, "test")[1], images.view(5, 3, 8, 8)[1])
    assert check_dataset("toy", tmp_path) == f"toy: 3 train + 2 test toys in {tmp_path}"
    assert "toy" in downloadable() and download("toy", tmp_path) == tmp_path
    assert fetched == [tmp_path]
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("toy", None, "train")
    assert_message(err, "toy: no data_dir given", "toy.bin", "nowhere", "data download toy")


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("nested", [False, True], ids=["root", "batches-folder"])
def test_cifar10_round_trip(tmp_path: Path, nested: bool) -> None:
    fx = write_cifar10(tmp_path, n_train_per_batch=3, n_test=4, seed=1)
    data_dir = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    train, test = (load_dataset("cifar10", data_dir, s) for s in ("train", "test"))
    assert len(train) == 15 and len(test) == 4
    x = stack(train)
    assert x.dtype == torch.uint8 and x.shape == (15, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(fx.train)) and torch.equal(
        stack(test), torch.from_numpy(fx.test)
    )
    assert check_dataset("cifar10", data_dir).startswith("cifar10: 15 train + 4 test images")
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch.dtype == torch.uint8 and torch.equal(batch, x[:4])


def test_cifar10_channel_major_layout(tmp_path: Path) -> None:
    write_cifar10(tmp_path, 2, 2)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # trusted: we wrote it
    x = load_dataset("cifar10", tmp_path, "train")[2]  # first image of batch 2
    for c, i, j in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 3)]:
        assert x[c, i, j] == raw["data"][0, c * 1024 + i * 32 + j]


def test_cifar10_fixture_is_a_python2_pickle(tmp_path: Path) -> None:
    write_cifar10(tmp_path, 2, 2)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"U\x04data" in raw  # protocol 2, byte-string keys
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # numpy 1 module name
    batch = pickle.loads(raw, encoding="latin1")
    assert sorted(batch) == ["batch_label", "data", "filenames", "labels"]
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (2, 3072)
    assert (tmp_path / "cifar-10-batches-py" / "batches.meta").is_file()


# ----------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("layout", ["flat", "split"])
@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet_round_trip(tmp_path: Path, fmt: str, layout: str, size: int) -> None:
    fx = write_imagenet(tmp_path, size, n_train_per_batch=2, n_val=3, fmt=fmt, layout=layout)
    name = f"imagenet{size}"
    train, test = load_dataset(name, tmp_path, "train"), load_dataset(name, tmp_path, "test")
    assert len(train) == 20 and len(test) == 3 and train[0].shape == (3, size, size)
    assert torch.equal(stack(train), torch.from_numpy(fx.train))  # batch order 1..10, not 1, 10, 2
    assert torch.equal(stack(test), torch.from_numpy(fx.test))
    assert check_dataset(name, tmp_path) == f"{name}: 10 train + 1 test batch files in {tmp_path}"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_imagenet_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    labels = np.array([1, 5, 1000])  # numpy ints pickle as numpy scalars
    batch = {"data": x, "labels": list(labels), "mean": x.mean(0)}
    (tmp_path / "val_data").write_bytes(pickle.dumps(batch, protocol=protocol))
    assert torch.equal(
        load_dataset("imagenet32", tmp_path, "test").images.reshape(3, -1), torch.from_numpy(x)
    )


def test_imagenet_compressed_npz(tmp_path: Path) -> None:
    fx = write_imagenet(tmp_path, 32, 2, 3, fmt="npz")
    np.savez_compressed(tmp_path / "val_data.npz", data=fx.test.reshape(3, -1), labels=np.ones(3))
    assert torch.equal(
        load_dataset("imagenet32", tmp_path, "test").images, torch.from_numpy(fx.test)
    )
    check_dataset("imagenet32", tmp_path)


def test_imagenet_loads_into_one_preallocated_array(tmp_path: Path) -> None:
    write_imagenet(tmp_path, 32, 5, 2)
    images = load_dataset("imagenet32", tmp_path, "train").images
    base = images.numpy().base if images.numpy().base is not None else images.numpy()
    assert images.is_contiguous() and images.shape == (50, 3, 32, 32)
    assert base.nbytes == images.numel()  # shrunk in place to the exact size


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet_peak_memory_is_one_copy(tmp_path: Path, fmt: str) -> None:
    write_imagenet(tmp_path, 64, n_train_per_batch=40, n_val=1, fmt=fmt)  # 10 batches of 0.5 MB
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        images = load_dataset("imagenet64", tmp_path, "train").images
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The dataset plus about one batch in flight; concatenating the batches would need 2x.
    assert peak < 1.5 * images.numel()


# ----------------------------------------------------------------------------- CelebA


def test_celeba_crops(tmp_path: Path) -> None:
    fx = write_celeba(tmp_path, n_images=12, seed=3)
    official = stack(load_dataset("celeba", tmp_path, "train"))
    center = stack(load_dataset("celeba", tmp_path / "celeba", "train", celeba_crop="center148"))
    assert official.shape == center.shape == (len(fx.train), 3, 64, 64)
    assert official.dtype == center.dtype == torch.uint8
    # Independent references: torch's antialiased bilinear resize of the originals (JPEG costs a
    # few levels); the crop is the central 148x148 of 178x218: rows 35..182, columns 15..162.
    x = torch.from_numpy(fx.train).double()
    want_official = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    want_center = F.interpolate(
        x[:, :, 35:183, 15:163], size=(64, 64), mode="bilinear", antialias=True
    )
    for got, want in [(official, want_official), (center, want_center)]:
        err = (got.double() - want).abs()
        assert err.max() < 6 and err.mean() < 1
    assert (official.double() - center.double()).abs().mean() > 10  # the crops differ


def test_celeba_splits(tmp_path: Path) -> None:
    fx = write_celeba(tmp_path, n_images=10)
    sizes = {s: len(load_dataset("celeba", tmp_path, s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 8, "valid": 1, "test": 1}
    assert fx.valid is not None and len(fx.valid) == 1
    assert check_dataset("celeba", tmp_path).startswith("celeba: 8 train + 1 valid + 1 test")
    assert check_dataset("celeba", tmp_path, "valid").startswith("celeba: 1 valid images")
    with pytest.raises(ValueError, match="splits"):
        load_dataset("celeba", tmp_path, "val")
    with pytest.raises(ValueError, match="unknown CelebA crop"):
        load_dataset("celeba", tmp_path, "train", celeba_crop="center140")


# ----------------------------------------------------------------------------- errors


def assert_message(err: pytest.ExceptionInfo[DatasetError], *parts: str) -> None:
    message = str(err.value)
    for part in parts:
        assert part in message, f"{part!r} not in:\n{message}"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", tmp_path / "nowhere", "train")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DatasetError)
    assert_message(
        err,
        "cifar10",
        "cifar-10-batches-py/data_batch_1..5",
        "test_batch",
        "does not exist",
        CIFAR_URL,
    )


def test_empty_directory(tmp_path: Path) -> None:
    for name in ("cifar10", "imagenet32", "imagenet64", "celeba"):
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset(name, tmp_path, "test")
        assert_message(err, f"{name}: data not found", "is empty", str(tmp_path))
        assert_message(
            err,
            *{
                "cifar10": ["missing: data_batch_1..5, test_batch\n", CIFAR_URL],
                "imagenet32": ["missing: val_data\n", "image-net.org", "login", "Imagenet32_val"],
                "imagenet64": [
                    "missing: val_data\n",
                    "train_data_batch_1..10",
                    "image-net.org",
                    "login",
                    "Imagenet64_train",
                ],
                "celeba": ["list_eval_partition.txt", "img_align_celeba", "mmlab.ie.cuhk.edu.hk"],
            }[name],
        )


def test_no_data_dir() -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("imagenet64", None, "train")
    assert_message(
        err, "imagenet64", "no data_dir", "train_data_batch_1..10, val_data", "image-net.org"
    )


def test_missing_cifar_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path, 2, 2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", tmp_path, "test")  # the copy is incomplete whatever the split
    assert_message(err, "missing: data_batch_3\n", "holds batches.meta, data_batch_1", CIFAR_URL)


def test_missing_imagenet_batches(tmp_path: Path) -> None:
    write_imagenet(tmp_path, 64, 2, 2, layout="split", num_batches=7)
    assert len(load_dataset("imagenet64", tmp_path, "test")) == 2  # val alone is enough for test
    assert check_dataset("imagenet64", tmp_path, "test").startswith("imagenet64: 1 test batch")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("imagenet64", tmp_path, "train")
    assert_message(
        err,
        "missing: train_data_batch_8..10\n",
        "Imagenet64_train_part1/",
        "image-net.org",
        "login",
    )


def test_imagenet_wrong_size(tmp_path: Path) -> None:
    write_imagenet(tmp_path, 32, 2, 2)
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("imagenet64", tmp_path, "test")
    assert isinstance(err.value, ValueError)
    assert_message(err, "imagenet64", "val_data", "(2, 3072)", "(N, 12288)")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "float32"),
        ({"data": np.zeros((2, 32, 32, 3), np.uint8), "labels": [1, 2]}, "(2, 32, 32, 3)"),
        ({"labels": [1, 2]}, "'data'"),
        ({"data": [[0] * 3072]}, "not a numpy array"),
        ([np.zeros((2, 3072), np.uint8)], "expected a dict"),
    ],
    ids=["dtype", "shape", "no-data-key", "list-data", "not-a-dict"],
)
def test_malformed_pickle(tmp_path: Path, content: object, problem: str) -> None:
    (tmp_path / "val_data").write_bytes(pickle.dumps(content))
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("imagenet32", tmp_path, "test")
    assert_message(err, "imagenet32: malformed file", str(tmp_path / "val_data"), problem)


def test_npz_without_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "val_data.npz", images=np.zeros((2, 3072), np.uint8))
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("imagenet32", tmp_path, "test")
    assert_message(err, "val_data.npz", "no 'data' array")


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    write_imagenet(tmp_path, 32, 2, 4, fmt=fmt)
    path = tmp_path / ("val_data.npz" if fmt == "npz" else "val_data")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("imagenet32", tmp_path, "test")
    assert_message(err, str(path))
    with pytest.raises(DatasetFormatError) as err:  # the quick check catches it too
        check_dataset("imagenet32", tmp_path)
    assert_message(err, str(path))


def test_truncated_cifar_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path, 2, 2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DatasetFormatError) as err:
        check_dataset("cifar10", tmp_path)
    assert_message(
        err,
        "cifar10: malformed file",
        "data_batch_4",
        "not a complete pickle (truncated download?)",
    )


def test_ambiguous_imagenet_copies(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "a", 32, 1, 2, layout="split")
    write_imagenet(tmp_path, 32, 1, 2, fmt="npz", layout="flat")
    (tmp_path / "Imagenet32_val").mkdir()
    (tmp_path / "Imagenet32_val" / "val_data").write_bytes(
        (tmp_path / "a/Imagenet32_val/val_data").read_bytes()
    )
    with pytest.raises(DatasetFormatError, match="val_data found more than once"):
        load_dataset("imagenet32", tmp_path, "test")


def test_celeba_errors(tmp_path: Path) -> None:
    write_celeba(tmp_path, 10)
    table = tmp_path / "celeba" / "list_eval_partition.txt"
    (tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("celeba", tmp_path, "train")
    assert_message(err, "celeba", "missing: img_align_celeba/000002.jpg\n", "000001.jpg")
    (tmp_path / "celeba" / "img_align_celeba" / "000010.jpg").write_bytes(b"<html>quota</html>")
    with pytest.raises(DatasetFormatError) as err:
        check_dataset("celeba", tmp_path, "test")  # the check decodes one image
    assert_message(err, "000010.jpg", "cannot be decoded")
    table.write_text("000001.jpg 0\n000002.jpg x\n")
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("celeba", tmp_path, "train")
    assert_message(err, "list_eval_partition.txt", "line 2", "000002.jpg x")
    table.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("celeba", tmp_path, "test")
    assert_message(err, "missing: list_eval_partition.txt\n", "holds img_align_celeba/")


def test_empty_split_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_train_per_batch=0, n_test=2)
    with pytest.raises(DatasetFormatError) as err:
        check_dataset("cifar10", tmp_path)
    assert_message(err, "cifar10: the 'train' split holds no images", "50,000", CIFAR_URL)
    with pytest.raises(DatasetFormatError, match="'train' split holds no images"):
        load_dataset("cifar10", tmp_path, "train")
    assert check_dataset("cifar10", tmp_path, "test").startswith("cifar10: 2 test images")
    for fmt in ("pickle", "npz"):
        root = tmp_path / fmt
        write_imagenet(root, 32, n_train_per_batch=1, n_val=0, fmt=fmt)
        with pytest.raises(DatasetFormatError) as err:
            check_dataset("imagenet32", root)
        assert_message(err, "imagenet32: the 'test' split holds no images", str(root), "50,000")
        assert check_dataset("imagenet32", root, "train").startswith("imagenet32: 10 train")
        with pytest.raises(DatasetFormatError, match="'test' split holds no images"):
            load_dataset("imagenet32", root, "test")


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", None, "train")
    with pytest.raises(ValueError, match="not 'valid'"):
        load_dataset("cifar10", None, "valid")


# ----------------------------------------------------------------------------- restricted unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Rot13:
    def __reduce__(self) -> tuple[object, ...]:
        return (codecs.encode, ("abc", "rot13"))


def test_unpickler_rejects_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path, 1, 1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}))
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("cifar10", tmp_path, "test")
    assert_message(err, "test_batch", "forbidden global", "system")
    assert not marker.exists()
    for evil in (_Evil(marker), _Rot13(), print):
        (tmp_path / "p").write_bytes(pickle.dumps(evil))
        with pytest.raises(pickle.UnpicklingError, match="forbidden"):
            restricted_unpickle(tmp_path / "p")
    assert not marker.exists()


def test_unpickler_reads_plain_values(tmp_path: Path) -> None:
    value = {
        "a": [1, 2.5, "x", b"y", None, True, (1, 2)],
        "n": np.float64(2.0),
        "i": np.int64(7),
        "m": np.arange(6, dtype=np.float32).reshape(2, 3),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "p").write_bytes(pickle.dumps(value, protocol=protocol))
        got = restricted_unpickle(tmp_path / "p")
        assert got["a"] == value["a"] and got["n"] == 2.0 and got["i"] == 7
        assert np.array_equal(got["m"], value["m"]) and got["m"].dtype == np.float32


def test_unpickler_takes_any_allow_list(tmp_path: Path) -> None:
    import argparse
    import io

    allow = AllowList.of("argparse.Namespace", argparse.Namespace)
    ns = argparse.Namespace(a=1, b=[2.5, "x"])
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        raw = pickle.dumps(ns, protocol=protocol)
        assert restricted_unpickle(io.BytesIO(raw), allow) == ns
        with pytest.raises(pickle.UnpicklingError, match="only plain values and numpy arrays"):
            restricted_unpickle(io.BytesIO(raw))  # the default list has no Namespace
    (tmp_path / "p").write_bytes(pickle.dumps(np.zeros(2)))
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global .*only argparse.Namespace"):
        restricted_unpickle(tmp_path / "p", allow)


# ----------------------------------------------------------------------------- download


def test_download_imagenet_is_manual(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        download("imagenet32", tmp_path)
    assert_message(err, "imagenet32 cannot be downloaded automatically", "image-net.org", "login")


@pytest.mark.parametrize("name", ["cifar10", "celeba"])
def test_download_failure_is_clear(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as err:  # conftest blocks sockets
        download(name, tmp_path)
    assert_message(
        err,
        f"{name}: download into {tmp_path} failed",
        "get it by hand",
        CIFAR_URL if name == "cifar10" else "mmlab.ie.cuhk.edu.hk",
    )
    assert download("photos", tmp_path) == tmp_path


def test_download_celeba_without_gdown_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[Path] = []
    monkeypatch.setitem(
        DATASETS, "celeba", dataclasses.replace(DATASETS["celeba"], download=fetched.append)
    )
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown raises ImportError
    with pytest.raises(DatasetNotFoundError) as err:
        download("celeba", tmp_path)
    assert fetched == []  # refused before anything is fetched
    assert_message(
        err,
        f"celeba: download into {tmp_path} failed",
        "'gdown'",
        'pip install -e ".[download]"',
        "get it by hand: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        "img_align_celeba.zip",
        "drive.google.com/uc?id=0B7EVK8r0v71pZjFTYXZWM3FlRnM",
        "list_eval_partition.txt",
    )
    message = str(err.value)
    assert "data download" not in message and "densflow.data.download" not in message
    with pytest.raises(DatasetNotFoundError) as err:  # where the data is missing, both ways
        load_dataset("celeba", tmp_path, "train")
    assert_message(
        err,
        "mmlab",
        "python -m densflow data download celeba --data-dir DIR "
        '(needs pip install -e ".[download]")',
    )


def test_the_celeba_extra_provides_gdown() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    module, extra = DATASETS["celeba"].download_needs
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert any(d.startswith(module) for d in project["optional-dependencies"][extra])
    assert f"- {module}" in (root / "environment.yml").read_text()


def test_data_download_offers_only_downloadable_datasets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from densflow.cli import build_parser

    assert downloadable() == ("cifar10", "celeba")
    parser = build_parser()
    assert parser.parse_args(["data", "download", "celeba", "--data-dir", "d"]).name == "celeba"
    for name in ("imagenet32", "imagenet64", "photos"):
        with pytest.raises(SystemExit):
            parser.parse_args(["data", "download", name, "--data-dir", "d"])
        assert "invalid choice" in capsys.readouterr().err
    assert parser.parse_args(["data", "check", "imagenet64"]).name == "imagenet64"


# ----------------------------------------------------------------------------- augmentation


def reference_shifts(x: torch.Tensor, s: int) -> torch.Tensor:
    """Every candidate output: flip or not, pad s pixels (replicate), crop at every offset.

    Returns (B, 2, 2s+1, 2s+1, C, H, W): index [b, f, s - dy, s - dx] is image b, flipped if f,
    translated by (dx, dy) with edge replication.
    """
    B, C, H, W = x.shape
    both = torch.stack([x, x.flip(-1)], 1).double().reshape(B * 2, C, H, W)
    padded = F.pad(both, (s, s, s, s), mode="replicate")
    crops = padded.unfold(2, H, 1).unfold(3, W, 1)  # (2B, C, 2s+1, 2s+1, H, W)
    return crops.permute(0, 2, 3, 1, 4, 5).reshape(B, 2, 2 * s + 1, 2 * s + 1, C, H, W)


@pytest.mark.parametrize("s", [1, 3])
def test_augmentation_is_flip_and_bounded_shift(s: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    y = Augmentation(flip=True, shift=s)(x, torch.Generator().manual_seed(1))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    match = (reference_shifts(x, s) == y.double()[:, None, None, None]).flatten(4).all(4)
    assert (match.flatten(1).sum(1) == 1).all()  # exactly one (flip, dx, dy) explains each image
    _, flip, oy, ox = match.nonzero().T
    assert set(flip.tolist()) == {0, 1}
    assert set((s - ox).tolist()) == set(range(-s, s + 1)) == set((s - oy).tolist())
    for k in range(3):  # spot-check the bookkeeping by hand: pad, then crop
        f, dy, dx = flip[k].item(), s - oy[k].item(), s - ox[k].item()
        src = F.pad((x[k].flip(-1) if f else x[k])[None].double(), (s,) * 4, mode="replicate")[0]
        assert torch.equal(y[k].double(), src[:, s - dy : s - dy + 12, s - dx : s - dx + 10])
        assert torch.equal(y[k, :, 5, 5], (x[k].flip(-1) if f else x[k])[:, 5 - dy, 5 - dx])


def test_augmentation_flip_rate() -> None:
    x = torch.randint(
        0, 256, (4000, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    y = Augmentation(flip=True, shift=0)(x, torch.Generator().manual_seed(2))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert ((y == x).flatten(1).all(1) | flipped).all()
    assert 0.46 < flipped.double().mean() < 0.54  # 4000 fair coins: sd 0.008


def test_augmentation_generator_controls_everything() -> None:
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    aug = augmentation_for("imagenet64")
    a = aug(x, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(6)))
    g = torch.Generator().manual_seed(5)
    aug(x, g)
    assert not torch.equal(a, aug(x, g))  # the generator advances: next batch draws anew


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_on_cuda_matches_cpu() -> None:
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    aug = augmentation_for("imagenet64")
    want = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(aug(x.cuda(), torch.Generator().manual_seed(4)).cpu(), want)


def test_augmentation_input_checks() -> None:
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert Augmentation(flip=False, shift=0)(x, torch.Generator()) is x
    with pytest.raises(ValueError, match="uint8"):
        Augmentation(shift=1)(x.float(), torch.Generator())
    with pytest.raises(ValueError, match="does not fit"):
        Augmentation(shift=4)(x, torch.Generator())


# ----------------------------------------------------------------------------- photos


def test_photos_sizes_and_content() -> None:
    data.photos._photos.cache_clear()
    start = time.process_time()  # CPU time: robust to a busy machine (wall ~0.3 s here)
    train, test = load_dataset("photos", None, "train"), load_dataset("photos", None, "test")
    assert time.process_time() - start < 2.0
    assert (len(train), len(test)) == (DATASETS["photos"].train_size, DATASETS["photos"].test_size)
    for ds in (train, test):
        x = ds.images
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and ds[0].shape == (3, 32, 32)
        std = x.double().flatten(1).std(1)
        assert std.median() > 20 and (std < 3).double().mean() < 0.05  # real, varied content
        assert x.min() < 10 and x.max() > 245
        assert set(ds.origins[:, 0].tolist()) == set(range(len(ds.photos)))  # every photo is used
    assert len(load_dataset("photos", None, "train", patch_stride=32)) < len(train)


# SHA-256 of the default patches as cut from scikit-image 0.26's own copies of the photographs,
# before densflow shipped them: the shipped PNGs must give the same pixels, so the course model and
# every committed number stay valid.
PHOTO_DIGESTS = {
    "train": "a252d063c0acd837d145b0950efe8c85b5c291524430a4e44e2fe68aee19ff73",
    "test": "94d3611febc48c896ca9c2f7360d63bb2a680fa6467bf2ff9da5d47a1743aa8a",
}


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_shipped_photos_give_the_patches_cut_from_scikit_image(split) -> None:
    images = load_dataset("photos", None, split).images
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == PHOTO_DIGESTS[split]


def test_the_photos_need_no_scikit_image() -> None:
    code = (
        "import sys; sys.modules['skimage'] = sys.modules['scipy'] = None\n"
        "from densflow.data import load_dataset\n"
        "print(len(load_dataset('photos', None, 'test')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "532"


def test_photos_deterministic() -> None:
    a = load_dataset("photos", None, "test", patch_stride=24).images
    data.photos._photos.cache_clear()
    assert torch.equal(a, load_dataset("photos", None, "test", patch_stride=24).images)


def test_photos_train_test_regions_disjoint() -> None:
    train, test = load_dataset("photos", None, "train"), load_dataset("photos", None, "test")
    photos = data.photos._photos()
    for k, photo in enumerate(photos):
        (a0, a1), (b0, b1) = train.regions[k], test.regions[k]
        assert 0 == a0 and a1 + 32 <= b0 and b1 == photo.shape[1]
        left_train = train.origins[train.origins[:, 0] == k, 2]
        left_test = test.origins[test.origins[:, 0] == k, 2]
        assert left_train.min() >= a0 and left_train.max() + 32 <= a1
        assert left_test.min() >= b0 and left_test.max() + 32 <= b1
        assert left_train.max() + 32 + 32 <= left_test.min()  # a gap of >= 32 px between patches
    for ds in (train, test):  # the bookkeeping names the pixels each patch holds
        for n in range(0, len(ds), 97):
            k, top, left = ds.origins[n].tolist()
            crop = photos[k][top : top + 32, left : left + 32].transpose(2, 0, 1)
            assert torch.equal(ds[n], torch.from_numpy(np.ascontiguousarray(crop)))
    assert check_dataset("photos", None).startswith(
        f"photos: {len(train)} train + {len(test)} test"
    )
