"""The relayer's per-step lock serialises identical steps and forgets idle keys."""

from __future__ import annotations

import asyncio

import pytest

from relayers.service import KeyedLock

pytestmark = pytest.mark.unit


async def test_same_key_is_serialised_and_other_keys_are_not() -> None:
    locks = KeyedLock()
    inside: list[str] = []
    peak = 0

    async def step(key: str, name: str) -> None:
        nonlocal peak
        async with locks.hold(key):
            inside.append(name)
            peak = max(peak, sum(1 for n in inside if n.startswith(key)))
            await asyncio.sleep(0.01)
            inside.remove(name)

    await asyncio.gather(*(step("a", f"a{i}") for i in range(5)), step("b", "b0"))
    assert peak == 1, "two holders of one key at once"
    assert len(locks) == 0, "idle keys are dropped"


async def test_key_is_released_after_an_exception() -> None:
    locks = KeyedLock()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("boom")
    assert len(locks) == 0
    async with asyncio.timeout(1):
        async with locks.hold("k"):
            pass
