"""``bench/cost_fit.py``: each process's CPU split into a fixed part and a part per transfer
over runs at several rates, the rate at which each would fill a core of its own, and the
cores each kind would need at 1,000/s. Pure logic and the command line on JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from cost_fit import cost_fit, cost_fit_lines, main, run_point

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def _run(rate: float, window: float, **cpu_s: float) -> dict[str, Any]:
    """A run's ``--json`` output as far as the fit reads it: ``rate`` transfers ended per
    second over a ``window``-second CPU table (one in ten aborted: every ended one counts)."""
    ended = round(rate * window)
    processes = {k.replace("_", "-"): {"cpu_s": v} for k, v in cpu_s.items()}
    return {
        "cpu": {"window_s": window, "processes": processes},
        "summary": {"counts": {"committed": ended - ended // 10, "aborted": ended // 10}},
    }


def _runs() -> list[dict[str, Any]]:
    # coordinator: 0.2 cores + 2 ms a transfer; anvil: 0.05 + 0.6 ms; a proxy 0.5 ms and
    # nothing fixed; the client 0.3 ms; a relayer that does not grow with the load.
    return [
        _run(r, 50.0, coordinator=(0.2 + 0.002 * r) * 50, anvil_a=(0.05 + 0.0006 * r) * 50,
             evm_proxy_a=0.0005 * r * 50, bench_client=0.0003 * r * 50, relayer_a=0.1 * 50)
        for r in (50.0, 100.0, 160.0)
    ]  # fmt: skip


def test_each_processs_fixed_cpu_is_separated_from_its_cpu_per_transfer() -> None:
    """cores = fixed + marginal x rate over the runs; the one-core rate comes from both (CPU
    per transfer at one rate would charge the fixed part to every transfer), lowest first;
    the cores at 1,000/s are summed per kind."""
    fit = cost_fit([run_point(r) for r in _runs()])
    rows = fit["processes"]
    assert rows["coordinator"]["fixed_cores"] == pytest.approx(0.2)
    assert rows["coordinator"]["marginal_ms"] == pytest.approx(2.0)
    assert rows["coordinator"]["one_core_at_per_s"] == pytest.approx(400.0)
    assert rows["coordinator"]["cores_at"] == pytest.approx(2.2)
    assert rows["anvil-a"]["one_core_at_per_s"] == pytest.approx(0.95 / 0.0006)
    assert rows["relayer-a"]["one_core_at_per_s"] is None  # its load does not grow
    assert list(rows) == ["coordinator", "anvil-a", "evm-proxy-a", "bench-client", "relayer-a"]
    assert fit["sum"] == pytest.approx(
        {"bridge": 2.2 + 0.1, "ledgers": 0.65, "proxies": 0.5, "client": 0.3}
    )
    assert fit["rates_per_s"] == pytest.approx([50.0, 100.0, 160.0])
    text = cost_fit_lines(fit, cores=2)
    assert any(line.split()[:1] == ["coordinator"] and "~400/s" in line for line in text)
    assert text[-1] == "  cores needed at 1,000/s: 3.75 (this host has 2): bridge 2.30," \
        " ledgers 0.65, proxies 0.50, client 0.30"  # fmt: skip


def test_runs_that_cannot_be_fitted_give_nothing() -> None:
    """A run without a CPU table or without an ended transfer is left out; one rate alone
    (or the same rate twice) cannot be fitted."""
    first = run_point(_runs()[0])
    assert run_point({}) == {} and run_point({"cpu": {"window_s": 0.0}}) == {}
    assert run_point(_run(0.0, 50.0, coordinator=1.0)) == {}
    assert cost_fit([first, run_point({})]) == {}
    assert cost_fit([first, first]) == {}
    assert cost_fit_lines({}) == []


def test_the_command_line_fits_json_files_and_refuses_a_single_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for i, run in enumerate(_runs()):
        paths.append(tmp_path / f"run-{i}.json")
        paths[-1].write_text(json.dumps(run))
    out = tmp_path / "fit.json"
    assert main([*map(str, paths), "--at", "500", "--json", str(out)]) == 0
    assert "cores needed at 500/s" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["processes"]["coordinator"]["cores_at"] == pytest.approx(1.2)
    assert main([str(paths[0])]) == 2
    assert "two different rates" in capsys.readouterr().err


def test_a_process_only_some_runs_had_is_fitted_over_those_alone() -> None:
    """Runs with the devnet's TLS proxies mixed with runs without them: a proxy is fitted
    over the runs that had it (never read as idle in the others), and left out when those
    are at one rate only."""
    runs = _runs()
    for run in runs[:1]:
        del run["cpu"]["processes"]["evm-proxy-a"]
    fit = cost_fit([run_point(r) for r in runs])
    assert fit["processes"]["evm-proxy-a"]["marginal_ms"] == pytest.approx(0.5)
    assert fit["processes"]["evm-proxy-a"]["fixed_cores"] == pytest.approx(0.0, abs=1e-9)
    del runs[1]["cpu"]["processes"]["evm-proxy-a"]
    fit = cost_fit([run_point(r) for r in runs])
    assert "evm-proxy-a" not in fit["processes"] and "proxies" not in fit["sum"]
    assert fit["processes"]["coordinator"]["marginal_ms"] == pytest.approx(2.0)
