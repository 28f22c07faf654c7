"""Shared test fixtures. Tests never touch the network: sockets are blocked for every test."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig

# Fixtures made from the official implementation, copied into the repository (see its README.md).
REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "official"


class NetworkBlockedError(RuntimeError):
    pass


_LOOPBACK = ("127.", "::1", "localhost")


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and host.startswith(_LOOPBACK)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global torch generator (what module initialisers and
    un-seeded draws use), so its numbers do not depend on which tests ran before it."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only loopback connections (a notebook kernel talking to papermill) are allowed."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def only_loopback(real):
        def guarded(*args, **kwargs):
            target = args[1] if real in (connect, connect_ex) else args[0]
            if not _is_loopback(target):
                raise NetworkBlockedError(f"tests must not use the network (tried {target!r})")
            return real(*args, **kwargs)

        return guarded

    monkeypatch.setattr(socket.socket, "connect", only_loopback(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", only_loopback(connect_ex))
    monkeypatch.setattr(socket, "create_connection", only_loopback(create_connection))
    monkeypatch.setattr(socket, "getaddrinfo", only_loopback(getaddrinfo))


@pytest.fixture
def float64():
    """Run the test with float64 as the default dtype (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin against each other (up to
    20× slower); results are bit-identical either way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def escaped_sigterms() -> Iterator[list[int]]:
    """The SIGTERMs that reach the handler in place before the code under test: this test's
    recorder, so that code which lets a SIGTERM through fails the test instead of ending pytest."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR


@pytest.fixture
def model_and_images():
    """A tiny 32×32 DenseFlow (perturbed weights, ActNorms initialised) and the 4 uint8 images
    that initialised it."""
    torch.manual_seed(0)
    model = perturb(DenseFlow(DenseFlowConfig.tiny(image_size=32)), 0.02)
    x = torch.randint(
        0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    init_actnorms(model, x, generator=torch.Generator().manual_seed(1))
    return model, x
