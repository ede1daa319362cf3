"""``bench/transfers.py --pin``: one process of the run alone on a CPU, the rest on the
others (``bench/transfers_pin.py``), planned purely and applied to real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from transfers import parse_args
from transfers_pin import PinError, pin_alone, plan_pinning

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def test_the_named_process_gets_the_lowest_cpu_and_everyone_else_the_rest() -> None:
    plan = plan_pinning(["coordinator", "relayer-a", "bench-client"], "coordinator", {3, 1, 2})
    assert plan == {"coordinator": {1}, "relayer-a": {2, 3}, "bench-client": {2, 3}}


def test_an_unknown_process_or_a_single_cpu_is_refused() -> None:
    with pytest.raises(PinError, match="no such process"):
        plan_pinning(["coordinator"], "coordinatr", {0, 1})
    with pytest.raises(PinError, match="at least two CPUs"):
        plan_pinning(["coordinator", "relayer-a"], "coordinator", {0})


@pytest.fixture
def sleepers() -> Iterator[dict[str, int]]:
    procs = {
        name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        for name in ("alone", "other")
    }
    try:
        yield {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pinning_binds_every_thread_of_real_processes(sleepers: dict[str, int]) -> None:
    """Applied to two live processes (never this test's own): each thread's CPUs are the
    plan's."""
    plan = pin_alone(sleepers, "alone")
    mine = set(os.sched_getaffinity(0))
    assert plan["alone"] == {min(mine)} and plan["other"] == mine - {min(mine)}
    for name, pid in sleepers.items():
        for task in (Path("/proc") / str(pid) / "task").iterdir():
            assert os.sched_getaffinity(int(task.name)) == plan[name], (name, task.name)


def test_the_option_reaches_the_run_and_its_mode() -> None:
    assert parse_args(["--pin", "coordinator"]).pin == "coordinator"
    assert parse_args([]).pin == ""
