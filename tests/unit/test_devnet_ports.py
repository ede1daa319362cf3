"""The devnet never hands the same port to two components (the kernel may repeat one)."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from bridge.devnet import processes


class _RepeatingSocket:
    """A socket whose bind(0) yields ports from a fixed script, as a kernel may."""

    script: ClassVar[list[int]] = []

    def __init__(self, *args: Any) -> None:
        self.port = 0

    def __enter__(self) -> _RepeatingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.script.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_repeats_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    monkeypatch.setattr(socket, "socket", _RepeatingSocket)
    _RepeatingSocket.script = [40001, 40001, 40001, 40003]
    assert processes.free_port() == 40001
    assert processes.free_port() == 40003


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [processes.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))
