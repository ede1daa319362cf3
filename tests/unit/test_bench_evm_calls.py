"""``bench/evm_calls.py`` runs and reports every call it promises (no timing is asserted:
its figures are the benchmark's output, not a test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.batch]

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args`` and ``--json out``; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_call_benchmark_reports_every_call_for_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    done = run_bench("evm_calls.py", out, "--rounds", "3")
    report = json.loads(out.read_text())
    assert set(report["calls"]) == {
        "legsOf(50)",
        "holderOf",
        "flowStatus",
        "haltStatus",
        "lockBatch(50) estimate+build",
        "LegStateChanged log decoded",
        "TransferLocked log decoded",
    }
    for row in report["calls"].values():
        assert row["web3_us"] > 0 and row["calls_us"] > 0
    assert "legsOf(50)" in done.stdout


def test_the_batch_tree_benchmark_builds_and_checks_every_proof(tmp_path: Path) -> None:
    """``bench/batch_tree.py`` runs (every proof it takes verifies, else it fails) and
    reports per batch and per item."""
    out = tmp_path / "tree.json"
    done = run_bench("batch_tree.py", out, "--items", "7", "--rounds", "3")
    report = json.loads(out.read_text())
    assert report["items"] == 7 and report["rounds"] == 3
    assert report["batch_us"] > 0 and report["item_us"] > 0
    assert "7 claims:" in done.stdout


def test_the_coalescer_benchmark_times_both_ways_of_reading_two_keys(tmp_path: Path) -> None:
    """``bench/coalesce.py`` runs both modes (each driver checks it got its own answers,
    else it fails) and reports one figure per run."""
    out = tmp_path / "coalesce.json"
    done = run_bench("coalesce.py", out, "--rounds", "5", "--drivers", "7", "--repeat", "2")
    report = json.loads(out.read_text())
    assert report["rounds"] == 5 and report["drivers"] == 7
    assert set(report["us_per_step"]) == {"call", "enqueue"}
    assert all(len(v) == 2 and min(v) > 0 for v in report["us_per_step"].values())
    assert "enqueue" in done.stdout
