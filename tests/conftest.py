"""Shared fixtures: a socket guard that proves no test touches the network; a seeded global generator."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection raises, like an offline machine."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests (simulated offline machine)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


@pytest.fixture(autouse=True)
def _seeded_global_generator():
    """Every test starts from the same global generator state: recent PyTorch seeds it differently in
    every process, so a test that draws from it without a seed of its own would otherwise be a coin flip."""
    import torch

    torch.manual_seed(0)
    yield
