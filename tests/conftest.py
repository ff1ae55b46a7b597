"""Shared fixtures: a socket guard that proves no test touches the network."""

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
