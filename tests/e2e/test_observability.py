"""Issue 12 items 3-4 end to end: /metrics scraped during transfers, health following a
relayer's ledger, one trace across coordinator -> relayers -> verifiers, JSON-only logs.

The system runs with ``[metrics]`` on every bridge process and ``[tracing]`` exporting
over OTLP/HTTP to a collector stub in this test process (it decodes the real protobuf
export requests).
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.v1 import transfer_pb2 as S
from tests.e2e.conftest import eligible_everywhere
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.ops]

A, B = "brokerage-a", "brokerage-b"


class Collector:
    """An OTLP/HTTP traces endpoint: keeps (service.name, trace id, span name) per span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, bytes, str]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with lock:
                    for rs in req.resource_spans:
                        service = next(
                            a.value.string_value
                            for a in rs.resource.attributes
                            if a.key == "service.name"
                        )
                        for ss in rs.scope_spans:
                            spans.extend((service, s.trace_id, s.name) for s in ss.spans)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> Iterator[LocalSystem]:
    with LocalSystem(
        Path(tmp_path_factory.mktemp("obs")),
        block_time=0.5,
        transfer_ttl=60,
        metrics=True,
        tracing_endpoint=collector.url,
    ) as s:
        yield s


def scrape(
    system: LocalSystem, process: str
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` of one process: sample name -> sorted labels -> value."""
    url = f"http://127.0.0.1:{system.metrics_ports[process]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def health(system: LocalSystem, process: str, peer: str) -> int:
    with system.channel("depository", peer=peer) as ch:
        return int(
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            .status
        )


def transfer(system: LocalSystem, units: int = 10) -> str:
    """Move ``units`` from A to B for a fresh holder; return the id once COMMITTED."""
    holder = system.ledgers[A].make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    return _submit(system, holder, units)


def _submit(system: LocalSystem, holder: DevAccount, units: int) -> str:
    from bridge.devnet.client import RoutedTransferStub

    stub = RoutedTransferStub(system, fallback_ledger=A, instruct=system.brokerage.instruct)
    try:
        resp = stub.SubmitTransfer(
            S.SubmitTransferRequest(
                idempotency_key=str(uuid.uuid4()),
                security_id=DEMO_ISIN,
                source_ledger=A,
                target_ledger=B,
                sender=holder.address,
                recipient=holder.address,
                amount=str(units),
            ),
            timeout=30,
        )
        states = [
            u.state
            for u in stub.WatchTransfer(
                S.WatchTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=90
            )
        ]
        assert states[-1] == S.TRANSFER_STATE_COMMITTED
        return str(resp.transfer.transfer_id)
    finally:
        stub.close()


def test_metrics_count_transfers_by_state_and_every_daemon_exports(
    observed: LocalSystem,
) -> None:
    transfer(observed)

    def committed() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        m = scrape(observed, "coordinator")
        n = m["kstb_transfers"].get((("state", "COMMITTED"),), 0)
        return m if n >= 1 else None

    m = eventually_sync(committed, 20, "the coordinator counts the committed transfer")
    assert set(dict(k)["state"] for k in m["kstb_transfers"]) >= {"SUBMITTED", "COMMITTED"}
    assert m["kstb_transfers_stuck"][()] == 0
    phases = {dict(k)["to_state"] for k in m["kstb_transfer_phase_seconds_count"]}
    assert {"SOURCE_LOCKED", "TARGET_PREPARED", "COMMITTED"} <= phases
    assert m["kstb_ready"][()] == 1
    assert m["kstb_supply_feed_age_seconds"][(("security", DEMO_ISIN),)] >= 0
    assert m["kstb_supply_records_published"][(("security", DEMO_ISIN),)] >= 1
    submit = [
        k for k in m["kstb_rpc_server_seconds_count"]
        if dict(k)["method"] == "/bridge.v1.TransferService/SubmitTransfer"
    ]  # fmt: skip
    assert submit, "RPC latency is recorded per method"
    for k in m["kstb_transfers"]:
        assert set(dict(k)) == {"state"}, "no transfer id as a label"

    r = scrape(observed, f"relayer-{A}")
    ledger = (("ledger", A),)
    assert r["kstb_relayer_scanned_height"][ledger] > 0
    assert r["kstb_relayer_lag_blocks"][ledger] >= 0
    assert r["kstb_relayer_gas_balance_wei"][ledger] > 0
    assert r["kstb_relayer_pending_transactions"][ledger] >= 0
    assert r["kstb_ready"][()] == 1

    v = scrape(observed, "verifier-0")
    signed = sum(val for k, val in v["kstb_member_signatures_total"].items()
                 if dict(k)["method"] == "claim")  # fmt: skip
    assert signed >= 2, "LOCKED and COMMIT at least"
    assert v["kstb_probe_up"][(("probe", f"ledger:{A}"),)] == 1


def test_one_trace_spans_coordinator_relayers_and_verifiers(
    observed: LocalSystem, collector: Collector
) -> None:
    transfer(observed)

    def joined() -> set[str] | None:
        services: dict[bytes, set[str]] = defaultdict(set)
        for service, trace_id, _ in list(collector.spans):
            services[trace_id].add(service)
        for names in services.values():
            if {"kstb-coordinator", "kstb-relayer", "kstb-verifier"} <= names:
                return names
        return None

    eventually_sync(joined, 20, "one trace with coordinator, relayer and verifier spans")
    names = {name for _, _, name in collector.spans}
    assert "transfer.step" in names
    assert "/bridge.v1.VerifierService/SignClaim" in names


def test_health_follows_the_relayers_ledger(observed: LocalSystem) -> None:
    relayer, peer = f"relayer-{B}", f"relayer:{B}"
    proxy = observed.ledgers[B].node.proxy
    assert proxy is not None
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert health(observed, relayer, peer) == serving
    proxy.stop()
    try:
        eventually_sync(
            lambda: health(observed, relayer, peer) == not_serving,
            20,
            "relayer NOT_SERVING without its ledger",
        )
        m = scrape(observed, relayer)
        assert m["kstb_ready"][()] == 0
        assert m["kstb_probe_up"][(("probe", "ledger"),)] == 0
        # The coordinator keeps serving (its store is fine) and reports the relayer's ledger.
        assert health(observed, "coordinator", "coordinator") == serving
    finally:
        proxy.start()
    eventually_sync(
        lambda: health(observed, relayer, peer) == serving,
        30,
        "relayer SERVING again once its ledger is back",
    )


def test_every_log_line_is_json(observed: LocalSystem) -> None:
    bad: list[str] = []
    for name, proc in observed.processes.items():
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(f"{name}: {line[:200]}")
                continue
            if not isinstance(record, dict) or "event" not in record or "level" not in record:
                bad.append(f"{name}: {line[:200]}")
    assert not bad, "\n".join(bad[:20])
