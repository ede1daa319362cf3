"""Issue 12 item 2 end to end: ``bridge doctor`` against a live devnet, and daemons refusing
to start on a wrong chain id or a committee that contradicts the network file.

One devnet for the module (two anvil ledgers, a 3-of-4 committee, two relayers, the
coordinator). EVM nodes are reached over plain http (``evm_node_auth=False``) so that one
member can be pointed at a stand-in node whose head is frozen (a lagging member). Faults are
undone after each test; the stopped relayer comes last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.main import main as cli_main
from bridge.config import dump_toml
from bridge.daemon import EXIT_WRONG_LEDGER
from bridge.devnet.processes import free_port
from bridge.devnet.system import LocalSystem
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.rpc.tls import INSECURE_ENV
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.ops]

A, B = "brokerage-a", "brokerage-b"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A running devnet whose EVM nodes are plain http (see the module docstring)."""
    with LocalSystem(
        tmp_path_factory.mktemp("doctor"),
        block_time=0.5,
        supply_heartbeat=2.0,
        evm_node_auth=False,
    ) as s:
        yield s


def doctor(
    s: LocalSystem, capsys: pytest.CaptureFixture[str], network: Path | None = None, *extra: str
) -> tuple[int, list[dict[str, str]]]:
    """``bridge doctor --json`` as the bridge operator; (exit code, rows)."""
    cert = s.certificate("bridge-operator")
    code = cli_main(
        [
            "--coordinator", s.coordinator_target,
            "--tls-cert", str(cert.cert_file),
            "--tls-key", str(cert.key_file),
            "doctor",
            "--network", str(network or s.workdir / "network.toml"),
            "--json",
            *extra,
        ]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == code
    return code, out["checks"]


def doctor_answered(
    s: LocalSystem,
    capsys: pytest.CaptureFixture[str],
    network: Path | None = None,
    down: tuple[str, ...] = (),
) -> tuple[int, list[dict[str, str]]]:
    """:func:`doctor` once every component but ``down`` answered (on a loaded host one call
    may time out; the doctor reports that, but these tests look at the other rows)."""

    def answered() -> tuple[int, list[dict[str, str]]] | None:
        code, rows = doctor(s, capsys, network)
        reach = [r for r in rows if r["check"] == "reachable" and r["component"] not in down]
        return (code, rows) if all(r["status"] == "OK" for r in reach) else None

    return eventually_sync(answered, 90.0, "every component answered", interval=1.0)


def row(rows: list[dict[str, str]], component: str, check: str) -> dict[str, str]:
    """The one row of ``component``/``check``."""
    found = [r for r in rows if r["component"] == component and r["check"] == check]
    assert len(found) == 1, (component, check, rows)
    return found[0]


def not_ok(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["status"] != "OK"]


def altered_network(s: LocalSystem, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of network.toml next to it (relative paths still resolve) with ``change``."""
    raw = tomllib.loads((s.workdir / "network.toml").read_text())
    change(raw)
    path = s.workdir / name
    path.write_text(dump_toml(raw))
    return path


def _wrong_chain_id(raw: dict[str, Any]) -> None:
    entry = next(e for e in raw["ledgers"] if e["id"] == B)
    entry["chain_id"] = int(entry["chain_id"]) + 1000


def _threshold_4(raw: dict[str, Any]) -> None:
    raw["committee"]["threshold"] = 4


def member(s: LocalSystem, i: int) -> str:
    return s.member_role(i)


def test_doctor_passes_on_a_healthy_devnet(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    # Right after start the feed may not have attested yet (WARN): wait for a clean bill.
    def healthy() -> list[dict[str, str]] | None:
        code, rows = doctor(system, capsys)
        return rows if code == 0 else None

    rows = eventually_sync(healthy, 90.0, "doctor exits 0", interval=1.0)
    assert not_ok(rows) == []
    components = {r["component"] for r in rows if r["check"] == "reachable"}
    assert components == {
        "coordinator",
        f"relayer:{A}",
        f"relayer:{B}",
        *(member(system, i) for i in range(4)),
    }
    for ledger in (A, B):
        assert row(rows, f"ledger:{ledger}", "committee")["detail"] == "epochs 1 (3-of-4)"
        assert "chain id" in row(rows, f"relayer:{ledger}", "network")["detail"]
        assert "lag" in row(rows, f"relayer:{ledger}", "lag")["detail"]
        assert "wei" in row(rows, f"relayer:{ledger}", "gas")["detail"]
    assert "newest attestation" in row(rows, "feed:" + system.isins[0], "feed age")["detail"]
    # The table form: one line per check and the summary.
    cert = system.certificate("bridge-operator")
    argv = ["--coordinator", system.coordinator_target, "--tls-cert", str(cert.cert_file),
            "--tls-key", str(cert.key_file), "doctor", "--network",
            str(system.workdir / "network.toml")]  # fmt: skip

    def table_ok() -> list[str] | None:
        code = cli_main(argv)
        lines = capsys.readouterr().out.splitlines()
        return lines if code == 0 else None

    table = eventually_sync(table_ok, 30.0, "the table exits 0", interval=1.0)
    assert table[0].split() == ["COMPONENT", "CHECK", "STATUS", "DETAIL"]
    assert table[-1].startswith("OK: ") and "0 fail" in table[-1]


def test_doctor_refuses_a_caller_without_the_role(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    # SECURITY: a brokerage's certificate reads no component's status.
    cert = system.certificate(f"brokerage:{A}")
    code = cli_main(
        ["--coordinator", system.coordinator_target, "--tls-cert", str(cert.cert_file),
         "--tls-key", str(cert.key_file), "doctor", "--json", "--network",
         str(system.workdir / "network.toml")]
    )  # fmt: skip
    rows = json.loads(capsys.readouterr().out)["checks"]
    assert code == 2
    reach = row(rows, "coordinator", "reachable")
    assert reach["status"] == "FAIL"
    assert "PERMISSION_DENIED" in reach["detail"]


def _doctor_as(
    s: LocalSystem, capsys: pytest.CaptureFixture[str], principal: str, *extra: str
) -> list[dict[str, str]]:
    cert = s.certificate(principal)
    cli_main(
        ["--coordinator", s.coordinator_target, "--tls-cert", str(cert.cert_file),
         "--tls-key", str(cert.key_file), "doctor", "--json", "--network",
         str(s.workdir / "network.toml"), *extra]
    )  # fmt: skip
    rows: list[dict[str, str]] = json.loads(capsys.readouterr().out)["checks"]
    return rows


@pytest.mark.security
def test_the_depository_is_told_less_and_the_coordinator_nothing(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review findings 3 and 9 over real mTLS: the depository's answer from the coordinator
    names no endpoint (so only what it names itself is dialled) and a relayer's tells it no
    operator account or gas; the coordinator's certificate reads no status at all."""
    relayer_a = system.target_of(f"relayer:{A}")

    def answered() -> list[dict[str, str]] | None:
        rows = _doctor_as(system, capsys, "depository", "--relayer", f"{A}={relayer_a}")
        ok = row(rows, f"relayer:{A}", "reachable")["status"] == "OK"
        return rows if ok and row(rows, "coordinator", "reachable")["status"] == "OK" else None

    rows = eventually_sync(answered, 90.0, "the depository's doctor answered", interval=1.0)
    assert row(rows, f"relayer:{B}", "reachable")["detail"] == "no endpoint known"
    assert row(rows, member(system, 0), "reachable")["detail"] == "no endpoint known"
    gas = row(rows, f"relayer:{A}", "gas")
    assert (gas["status"], gas["detail"]) == ("WARN", "not disclosed to this caller")
    assert row(rows, f"ledger:{A}", "committee")["status"] == "OK"  # what it needs stays
    rows = _doctor_as(system, capsys, "coordinator")
    reach = row(rows, "coordinator", "reachable")
    assert reach["status"] == "FAIL" and "PERMISSION_DENIED" in reach["detail"]


def test_doctor_catches_a_wrong_chain_id(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    network = altered_network(system, "network-wrong-chain.toml", _wrong_chain_id)
    code, rows = doctor_answered(system, capsys, network)
    assert code == 2
    bad = row(rows, f"relayer:{B}", "network")
    assert bad["status"] == "FAIL"
    chain = system.ledgers[B].node.chain_id
    assert bad["detail"] == (f"{B}: network: file chain id {chain + 1000}, node chain id {chain}")
    assert row(rows, f"relayer:{A}", "network")["status"] == "OK"
    # Every member reads that node too: each view of B fails the same way.
    for i in range(4):
        view = row(rows, member(system, i), f"view {B}")
        assert view["status"] == "FAIL"
        assert f"file chain id {chain + 1000}" in view["detail"]


def test_doctor_catches_a_committee_mismatch(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    network = altered_network(system, "network-threshold-4.toml", _threshold_4)
    code, rows = doctor_answered(system, capsys, network)
    assert code == 2
    for ledger in (A, B):
        bad = row(rows, f"ledger:{ledger}", "committee")
        assert bad["status"] == "FAIL"
        assert bad["detail"].startswith("committee epoch 1: file epoch 1, 4-of-4 [")
        assert ", ledger epoch 1, 3-of-4 [" in bad["detail"]
    # Every component runs with the deployed file, which now differs from the one passed.
    drift = [r for r in rows if r["check"] == "network file"]
    assert len(drift) == 7
    assert all(r["status"] == "FAIL" for r in drift)  # review finding 5: not a WARN
    assert drift[0]["detail"].startswith("another network file: fingerprint 0x")
    # Each member's own view of each ledger contradicts the file too (finding 5).
    views = [r for r in rows if r["check"] in (f"view {A}", f"view {B}")]
    assert views and all(r["status"] == "FAIL" for r in views)
    assert all(r["detail"].startswith("committee epoch 1: file epoch 1, 4-of-4 [") for r in views)
    assert {r["check"] for r in not_ok(rows) if r["status"] == "FAIL"} == {
        "committee",
        "network file",
        f"view {A}",
        f"view {B}",
    }


def _daemon_env() -> dict[str, str]:
    # As the devnet starts its processes (plain anvil http, plaintext devnet key files).
    return {**os.environ, INSECURE_ENV: "1", PLAINTEXT_KEYS_ENV: "1", "KSTB_LOG_FORMAT": "json"}


def _run_daemon(module: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_daemon_env(),
        check=False,
    )


def _refusal(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    found = [x for x in lines if x.get("event") == "wrong ledger, refusing to start"]
    assert found, done.stderr[-2000:]
    return dict(found[-1])


@pytest.mark.parametrize(
    ("module", "source", "network_change", "ledger", "what"),
    [
        ("relayers", f"relayer-{B}.toml", _wrong_chain_id, B, "chain id"),
        ("relayers", f"relayer-{A}.toml", _threshold_4, A, "committee epoch 1"),
        ("verifiers", "verifier-2.toml", _threshold_4, A, "committee epoch 1"),
    ],
    ids=["relayer-wrong-chain-id", "relayer-committee", "member-committee"],
)
def test_daemon_refuses_to_start_on_a_mismatch(
    system: LocalSystem,
    module: str,
    source: str,
    network_change: Callable[[dict[str, Any]], None],
    ledger: str,
    what: str,
) -> None:
    network = altered_network(system, f"network-{module}-{ledger}.toml", network_change)
    cfg = tomllib.loads((system.workdir / source).read_text())
    cfg["network"] = network.name
    cfg["listen"] = f"127.0.0.1:{free_port()}"
    for key in ("state_db", "vote_db"):
        if key in cfg:
            cfg[key] = f"state/refused-{module}-{ledger}.sqlite"
    cfg["audit_log"] = f"audit/refused-{module}-{ledger}.jsonl"
    config = system.workdir / f"refused-{module}-{ledger}.toml"
    config.write_text(dump_toml(cfg))
    done = _run_daemon(module, config)
    assert done.returncode == EXIT_WRONG_LEDGER, done.stderr[-2000:]
    refusal = _refusal(done)
    assert refusal["ledger"] == ledger
    assert refusal["what"] == what
    if what == "chain id":
        chain = system.ledgers[B].node.chain_id
        assert (refusal["expected"], refusal["found"]) == (str(chain + 1000), str(chain))
    else:
        assert refusal["expected"].startswith("epoch 1, 4-of-4 [")
        assert refusal["found"].startswith("epoch 1, 3-of-4 [")
    # Nothing was opened: the refused daemon never created its store.
    assert not (system.workdir / f"state/refused-{module}-{ledger}.sqlite").exists()


class FrozenHeadNode:
    """A stand-in EVM node: forwards JSON-RPC to ``upstream`` but reports the head as it was
    when started (``eth_blockNumber``), as a node stuck syncing would."""

    def __init__(self, upstream: str) -> None:
        self.height = self._call(upstream, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
        frozen = self.height

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                batch = body if isinstance(body, list) else [body]
                answers = [
                    {"jsonrpc": "2.0", "id": r.get("id"), "result": hex(frozen)}
                    if r.get("method") == "eth_blockNumber"
                    else FrozenHeadNode._forward(upstream, r)
                    for r in batch
                ]
                out = json.dumps(answers if isinstance(body, list) else answers[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _forward(upstream: str, request: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            upstream,
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    @staticmethod
    def _call(upstream: str, request: dict[str, Any]) -> int:
        return int(FrozenHeadNode._forward(upstream, request)["result"], 16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _restart_with(system: LocalSystem, name: str, text: str) -> None:
    system.processes[name].stop()
    (system.workdir / f"{name}.toml").write_text(text)
    system.start_process(name)


def test_doctor_catches_a_lagging_member(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    node = FrozenHeadNode(system.ledgers[A].node.rpc_url)
    original = (system.workdir / "verifier-1.toml").read_text()
    cfg = tomllib.loads(original)
    cfg["rpc_overrides"] = {A: node.url}
    try:
        _restart_with(system, "verifier-1", dump_toml(cfg))

        def lagging() -> list[dict[str, str]] | None:
            code, rows = doctor(system, capsys, None, "--max-lag", "3")
            return rows if code == 1 else None

        rows = eventually_sync(lagging, 60.0, "the doctor warns of the lagging member", 1.0)
        view = row(rows, member(system, 1), f"view {A}")
        assert view["status"] == "WARN"
        assert view["detail"].startswith(f"lagging: node at height {node.height}, relayer's at ")
        # Only that member's view of that ledger is flagged.
        assert [(r["component"], r["check"]) for r in not_ok(rows)] == [
            (member(system, 1), f"view {A}")
        ]
    finally:
        _restart_with(system, "verifier-1", original)
        node.close()


def test_doctor_catches_a_stopped_relayer(
    system: LocalSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    system.processes[f"relayer-{B}"].stop()
    try:
        code, rows = doctor_answered(system, capsys, down=(f"relayer:{B}",))
        assert code == 2
        down = row(rows, f"relayer:{B}", "reachable")
        assert down["status"] == "FAIL"
        assert down["detail"].startswith("UNAVAILABLE")
        # Nothing else is checked for it, and the other relayer is fine.
        assert [r for r in rows if r["component"] == f"relayer:{B}"] == [down]
        other = row(rows, f"relayer:{A}", "reachable")
        assert other["status"] == "OK", other
    finally:
        system.start_process(f"relayer-{B}")
