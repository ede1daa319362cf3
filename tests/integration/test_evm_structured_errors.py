"""A contract refusal on anvil reaches a gRPC client of the relayer as structured details
(ADR 0015): the ErrorInfo reason, the ledger, retryable and the revert's ABI figures, decoded
by a standard ``grpcio-status`` client and by the coordinator's ``translate``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bridge.coordinator.clients import translate
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import SecurityId
from bridge.domain.legs import Action
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.rpc.convert import terms_to_pb
from bridge.rpc.errors import DOMAIN, received_error
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import RelayerServicer
from tests.integration.conftest import TwoLedgers, instruct

pytestmark = pytest.mark.integration


@pytest.fixture
async def relayer(two_ledgers: TwoLedgers) -> AsyncIterator[relayer_pb2_grpc.RelayerServiceStub]:
    """Ledger A's relayer service on a real gRPC server (loopback, no TLS: the subject here
    is the status payload; TLS and authorisation are covered by their own tests)."""
    adapter = EvmAdapter(two_ledgers.a.config(), two_ledgers.a.relayer.private_key)
    server = grpc.aio.server()
    relayer_pb2_grpc.add_RelayerServiceServicer_to_server(
        RelayerServicer(adapter, submit_attempts=1), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield relayer_pb2_grpc.RelayerServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
        await adapter.close()


async def _refused(
    stub: relayer_pb2_grpc.RelayerServiceStub, request: object
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(request)
    return info.value


async def test_an_insufficient_balance_reaches_the_client_with_its_figures(
    two_ledgers: TwoLedgers, relayer: relayer_pb2_grpc.RelayerServiceStub
) -> None:
    env = two_ledgers
    alice, bob = env.a.holder(3), env.b.holder()
    t = env.terms(alice, bob, 5)
    request = relayer_pb2.SubmitRequest(
        action=Action.LOCK.value, terms=terms_to_pb(t), instruction=instruct(t)
    )
    exc = await _refused(relayer, request)
    assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
    # A standard client (grpcio-status) reads the same details.
    status = rpc_status.from_call(exc)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INSUFFICIENT_BALANCE", DOMAIN)
    assert info.metadata["error"] == "InsufficientBalance"
    assert info.metadata["ledger"] == env.a.name and info.metadata["retryable"] == "false"
    assert (info.metadata["figure_balance"], info.metadata["figure_needed"]) == ("3", "5")
    # The coordinator's client rebuilds the typed refusal from the details alone.
    back = translate(exc, "relayer of a", env.a.name)
    assert isinstance(back, LedgerRejected) and back.reason is ErrorReason.INSUFFICIENT_BALANCE
    assert (back.figure("balance"), back.figure("needed"), back.ledger) == (3, 5, env.a.name)
    assert env.a.balance(alice.address) == 3, "nothing was escrowed"


async def test_an_unregistered_security_reaches_the_client_as_unknown_security(
    two_ledgers: TwoLedgers, relayer: relayer_pb2_grpc.RelayerServiceStub
) -> None:
    env = two_ledgers
    alice, bob = env.a.holder(3), env.b.holder()
    t = env.terms(alice, bob, 1)
    t = replace(t, security=SecurityId("US0378331005").word)
    request = relayer_pb2.SubmitRequest(
        action=Action.LOCK.value, terms=terms_to_pb(t), instruction=instruct(t)
    )
    exc = await _refused(relayer, request)
    got = received_error(exc.trailing_metadata())  # type: ignore[arg-type]
    assert got.reason is ErrorReason.UNKNOWN_SECURITY and not got.retryable
    assert got.ledger == env.a.name
    assert not got.figures, "a bytes32 argument is not an integer figure on the wire"
    back = translate(exc, "relayer of a")
    assert isinstance(back, LedgerRejected) and back.reason is ErrorReason.UNKNOWN_SECURITY
