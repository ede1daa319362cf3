"""Test helpers: bounded polling instead of sleeps; counting a module's signature checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Await ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"not within {timeout:.1f}s: {what} (last: {last!r})")


def eventually_sync(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Synchronous :func:`eventually`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:.1f}s: {what} (last: {last!r})")


def signatures_checked(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[bytes]:
    """Each signature ``module`` hands to its ``verify_vote`` (a signer recovery), in
    order, from now on in this test; the check itself still runs."""
    checked: list[bytes] = []
    verify = module.verify_vote

    def counting(committee: Any, digest: bytes, signature: bytes) -> Any:
        checked.append(signature)
        return verify(committee, digest, signature)

    monkeypatch.setattr(module, "verify_vote", counting)
    return checked
