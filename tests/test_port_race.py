"""A port taken between ``free_port()`` and the server's bind: the starters retry on a new port.

Each test holds a listening socket on a port and makes the first ``free_port()`` return it, as if
another process had taken it in between; the real Orthanc / PostgreSQL must still start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import pacs
import postgres_support
import serve_support

pytestmark = pytest.mark.slow


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _first_returns(port: int):
    calls: list[int] = []

    def fake() -> int:
        calls.append(port if not calls else serve_support.free_port())
        return calls[-1]

    return fake, calls


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    ports = [serve_support.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_orthanc_starts_on_another_port_when_its_port_was_taken(
    taken_port, monkeypatch, tmp_path: Path
) -> None:
    fake, calls = _first_returns(taken_port)
    monkeypatch.setattr(pacs, "free_port", fake)
    with pacs.orthanc(tmp_path / "orthanc") as server:
        assert server.get_json("/system")
        assert taken_port not in (server.http_port, server.dicom_port)
    assert calls[0] == taken_port and len(calls) >= 4  # a second pair of ports was drawn


def test_postgres_starts_on_another_port_when_its_port_was_taken(
    taken_port, monkeypatch, tmp_path: Path
) -> None:
    fake, calls = _first_returns(taken_port)
    monkeypatch.setattr(postgres_support, "free_port", fake)
    with postgres_support.postgres_server(tmp_path / "pg") as url:
        assert f":{taken_port}/" not in url
    assert calls[0] == taken_port and len(calls) == 2
