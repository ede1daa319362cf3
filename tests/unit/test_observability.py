"""Observability pieces in-process (issue 12 items 3-4): the ``[metrics]``/``[tracing]``
tables refuse mistakes, readiness drives health both ways, the RPC interceptor measures
refused calls, trace context crosses a real gRPC hop, member refusals are logged and
counted with a bounded reason, and stdlib logging comes out as the same JSON."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import grpc
import pytest
import structlog
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import InvalidCertificate, InvalidInput, LedgerRejected, Unavailable
from bridge.obs import tracing
from bridge.obs.config import load_observability
from bridge.obs.metrics import CommonMetrics
from bridge.obs.readiness import Probe, Readiness
from bridge.obs.rpc import ObservingInterceptor
from bridge.rpc.server import BridgeServer
from verifiers import metrics as member_metrics
from verifiers.metrics import MemberMetrics, observed, refusal_reason

pytestmark = [pytest.mark.unit, pytest.mark.ops]


# -- configuration -----------------------------------------------------------------------------
def test_observability_tables_default_off() -> None:
    cfg = load_observability({}, "x.toml")
    assert cfg.metrics.listen == "" and not cfg.tracing.enabled
    cfg = load_observability(
        {
            "metrics": {"listen": "127.0.0.1:9464", "probe_interval": 1},
            "tracing": {"enabled": True, "endpoint": "http://127.0.0.1:4318/v1/traces"},
        },
        "x.toml",
    )
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.probe_interval) == (
        "127.0.0.1", 9464, 1.0,
    )  # fmt: skip
    assert cfg.tracing.enabled and cfg.tracing.sample_ratio == 1.0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"metrics": {"listn": "127.0.0.1:9464"}}, "metrics: unknown keys ['listn']"),
        ({"metrics": {"listen": "127.0.0.1"}}, "is not 'host:port'"),
        ({"metrics": {"listen": "127.0.0.1:70000"}}, "is not 'host:port'"),
        ({"metrics": {"listen": "metrics.example:9464"}}, "IP address or localhost"),
        ({"metrics": {"listen": 9464}}, "'host:port' string"),
        ({"metrics": {"probe_interval": 0}}, "probe_interval"),
        ({"metrics": {"probe_interval": True}}, "probe_interval"),
        ({"metrics": "on"}, "metrics must be a table"),
        ({"tracing": {"enabled": "yes"}}, "tracing.enabled"),
        ({"tracing": {"endpoint": "collector:4318"}}, "http(s) URL"),
        ({"tracing": {"sample_ratio": 1.5}}, "sample_ratio"),
        ({"tracing": {"exporter": "otlp"}}, "tracing: unknown keys ['exporter']"),
    ],
)
def test_observability_tables_refuse_mistakes_with_their_path(
    raw: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        load_observability(raw, "relayer.toml")
    assert "relayer.toml" in str(exc.value) and says in str(exc.value)


# -- readiness ---------------------------------------------------------------------------------
class FakeServer:
    def __init__(self) -> None:
        self.statuses: list[bool] = []

    async def set_serving(self, serving: bool) -> None:
        self.statuses.append(serving)


async def test_readiness_follows_gating_probes_both_ways() -> None:
    up = {"ledger": True, "peer": True}

    def probe(name: str) -> Any:
        async def check() -> None:
            if not up[name]:
                raise Unavailable(f"{name} down")

        return check

    metrics = CommonMetrics.create("test")
    server = FakeServer()
    ready = Readiness(
        server,
        [Probe("ledger", probe("ledger")), Probe("peer", probe("peer"), gating=False)],
        metrics,
        timeout=1,
    )
    assert await ready.check_once() and server.statuses == [True]
    up["peer"] = False  # not gating: still serving, reported
    assert await ready.check_once() and server.statuses == [True]
    assert metrics.probe_up.labels("peer")._value.get() == 0
    up["ledger"] = False
    assert not await ready.check_once() and server.statuses == [True, False]
    assert metrics.ready._value.get() == 0
    up["ledger"] = True
    assert await ready.check_once() and server.statuses == [True, False, True]
    assert metrics.ready._value.get() == 1


async def test_a_hanging_probe_counts_as_failed() -> None:
    async def hang() -> None:
        await asyncio.sleep(60)

    server = FakeServer()
    ready = Readiness(server, [Probe("store", hang)], CommonMetrics.create("t"), timeout=0.05)
    assert not await ready.check_once() and server.statuses == [False]


# -- a real gRPC server: health, RPC latency, trace context ----------------------------------
@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install_provider(provider, "test")
    monkeypatch.setattr(tracing, "shutdown", lambda: None)
    yield exporter
    tracing._tracer = tracing._provider = None


async def test_health_starts_not_serving_and_rpcs_are_measured_and_traced(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.rpc.channels import internal_channel
    from bridge.rpc.tls import INSECURE_ENV

    monkeypatch.setenv(INSECURE_ENV, "1")
    metrics = CommonMetrics.create("test")
    server = BridgeServer(
        "127.0.0.1:0", ["test.Service"], [], observers=[ObservingInterceptor(metrics)]
    )
    await server.start(serving=False)
    channel = internal_channel(f"127.0.0.1:{server.port}")  # carries the trace context
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert (
            await stub.Check(check, timeout=5)
        ).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_serving(True)

        class Record:
            transfer_id = b"\x01" * 32
            state = type("S", (), {"name": "SUBMITTED"})()
            request = type("R", (), {"source_ledger": "a", "target_ledger": "b"})()

        async def step(_: Any) -> int:
            return int((await stub.Check(check, timeout=5)).status)

        assert await tracing.step_span(step, Record()) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Check(health_pb2.HealthCheckRequest(service="unknown"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await server.stop(0)
    text = generate_latest(metrics.registry).decode()
    method = "/grpc.health.v1.Health/Check"
    assert f'kstb_rpc_server_seconds_count{{code="OK",method="{method}"}} 2.0' in text
    assert f'kstb_rpc_server_seconds_count{{code="NOT_FOUND",method="{method}"}} 1.0' in text
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "transfer.step")
    in_trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
    client = next(s for s in in_trace if s.kind.name == "CLIENT" and s.name == method)
    served = [s for s in in_trace if s.kind.name == "SERVER"]
    # Calls outside a step (the first and last Check) make no span at all.
    assert len(finished) == len(in_trace) == 3
    assert root.attributes["kstb.transfer_id"] == "0x" + "01" * 32
    assert client.parent is not None and client.parent.span_id == root.context.span_id
    assert [s.parent.span_id for s in served if s.parent] == [client.context.span_id]


async def test_tracing_off_adds_no_interceptor_and_no_span() -> None:
    assert not tracing.active() and tracing.client_interceptors() is None

    async def step(record: Any) -> str:
        return "done"

    assert await tracing.step_span(step, object()) == "done"


# -- member refusals ----------------------------------------------------------------------------
def test_refusal_reasons_are_a_closed_set() -> None:
    assert refusal_reason(InvalidCertificate("x", ErrorReason.NOT_ADMIN)) == "NotAdmin"
    assert refusal_reason(LedgerRejected(ErrorReason.NOT_ADMIN, "d")) == "NotAdmin"
    assert refusal_reason(LedgerRejected(ErrorReason.UNKNOWN_REFUSAL)) == "UnknownRefusal"

    class Foreign(Exception):
        reason = "attacker-chosen text"

    # A reason outside the closed set, or free text, never becomes a label.
    assert refusal_reason(Foreign()) == "Foreign"
    assert refusal_reason(InvalidInput("bad kind")) == "InvalidInput"


async def test_member_refusals_are_logged_and_counted() -> None:
    m = MemberMetrics(CommonMetrics.create("verifier"))
    member_metrics.install(m)
    try:

        class Servicer:
            @observed("claim")
            async def Sign(self, request: Any, context: Any) -> str:
                if request.kind == 2:
                    raise InvalidCertificate("forged", ErrorReason.NOT_ADMIN)
                return "signed"

        class Req:
            def __init__(self, kind: int) -> None:
                self.kind = kind
                self.terms = type("T", (), {"transfer_id": b"\x07" * 32})()

        with structlog.testing.capture_logs() as lines:
            assert await Servicer().Sign(Req(1), None) == "signed"
            with pytest.raises(InvalidCertificate):
                await Servicer().Sign(Req(2), None)
    finally:
        member_metrics.install(None)
    text = generate_latest(m.common.registry).decode()
    assert 'kstb_member_signatures_total{claim="LOCKED",method="claim"} 1.0' in text
    assert 'kstb_member_refusals_total{method="claim",reason="NotAdmin"} 1.0' in text
    refused = [x for x in lines if x["event"] == "request refused"]
    assert len(refused) == 1
    assert refused[0]["reason"] == "NotAdmin" and refused[0]["claim"] == "COMMIT"
    assert refused[0]["transfer_id"] == "0x" + "07" * 32


# -- logs ------------------------------------------------------------------------------------------
def test_stdlib_logging_and_uncaught_errors_come_out_as_json() -> None:
    code = (
        "import logging, warnings\n"
        "from bridge.logfields import configure\n"
        "configure('relayer').info('ours', height=3)\n"
        "logging.getLogger('web3.providers').warning('theirs %s', 1)\n"
        "logging.getLogger('grpc._cython').error('core')\n"
        "logging.getLogger('web3.providers').info('chatter hidden')\n"
        "warnings.warn('deprecated')\n"
        "raise RuntimeError('boom')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"KSTB_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
        check=False,
    )
    assert out.returncode == 1
    lines = [json.loads(x) for x in out.stderr.splitlines() if x.strip()]
    events = [(x["event"], x["level"], x.get("logger", "")) for x in lines]
    assert events[0] == ("ours", "info", "")
    assert ("theirs 1", "warning", "web3.providers") in events
    assert ("core", "error", "grpc._cython") in events
    assert not any(e == "chatter hidden" for e, _, _ in events)
    assert any(lg == "py.warnings" for _, _, lg in events)
    assert (
        lines[-1]["event"] == "uncaught exception"
        and "RuntimeError: boom" in lines[-1]["exception"]
    )
    assert all(x["component"] == "relayer" for x in lines)


# -- per-daemon probes -------------------------------------------------------------------------
class FakeEvmAdapter:
    def __init__(self) -> None:
        self.down = False

    async def finalized_height(self) -> int:
        if self.down:
            raise Unavailable("ledger a unreachable during eth_blockNumber")
        return 10

    async def gas_balance(self) -> int:
        return 5 * 10**18

    async def pending_transactions(self) -> int:
        return 2


async def test_relayer_probes_refresh_height_lag_gas_and_fail_without_the_ledger(
    tmp_path: Any,
) -> None:
    from bridge.domain.legs import EventPosition
    from relayers.checkpoint import END_OF_BLOCK, CheckpointStore
    from relayers.metrics import RelayerMetrics

    checkpoints = CheckpointStore(tmp_path / "state.sqlite", "a")
    checkpoints.save(EventPosition(7, END_OF_BLOCK))
    adapter = FakeEvmAdapter()
    watcher: Any = type("W", (), {"delivered": 4})()
    common = CommonMetrics.create("relayer")
    m = RelayerMetrics(common, "a", adapter, checkpoints, watcher)  # type: ignore[arg-type]
    server = FakeServer()
    ready = Readiness(server, m.probes(), common, timeout=1)
    try:
        assert await ready.check_once()
        text = generate_latest(common.registry).decode()
        for line in (
            'kstb_relayer_scanned_height{ledger="a"} 7.0',
            'kstb_relayer_lag_blocks{ledger="a"} 3.0',
            'kstb_relayer_gas_balance_wei{ledger="a"} 5e+18',
            'kstb_relayer_pending_transactions{ledger="a"} 2.0',
            'kstb_relayer_events_delivered{ledger="a"} 4.0',
        ):
            assert line in text, line
        adapter.down = True
        assert not await ready.check_once() and server.statuses == [True, False]
        adapter.down = False
        assert await ready.check_once() and server.statuses == [True, False, True]
    finally:
        checkpoints.close()


async def test_member_store_probe_fails_when_the_vote_log_is_gone(tmp_path: Any) -> None:
    from verifiers.metrics import member_probes
    from verifiers.votes import VoteLog

    path = tmp_path / "votes.sqlite"
    VoteLog(path).close()
    common = CommonMetrics.create("verifier")
    probes = member_probes(MemberMetrics(common), path, {})
    server = FakeServer()
    ready = Readiness(server, probes, common, timeout=1)
    assert await ready.check_once()
    path.unlink()
    assert not await ready.check_once() and server.statuses == [True, False]
