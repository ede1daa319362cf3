"""Structured errors end to end (ADR 0015): every ErrorReason round-trips through the EVM
revert decoder, the chaincode's error payload and a gRPC status with ErrorInfo details; a
garbled or forged payload is an unknown reason, never a crash and never trusted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_abi.abi import encode as abi_encode
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from bridge.coordinator.clients import translate
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeReason,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    StaleVersion,
    Unavailable,
    public_text,
    reason_name,
)
from bridge.domain.hashing import keccak256
from bridge.ledgers.evm.artifacts import load_abi
from bridge.ledgers.evm.revert import refusal
from bridge.ledgers.fabric.gateway import chaincode_failure, chaincode_refusal
from bridge.rpc.errors import (
    DETAILS_KEY,
    DOMAIN,
    RETRYABLE_REASONS,
    received_error,
    status_details,
    status_for,
)

_FABRIC = Path(__file__).resolve().parents[2] / "contracts" / "fabric"
if str(_FABRIC) not in sys.path:
    sys.path.insert(0, str(_FABRIC))

from kstb_chaincode.protocol import ChaincodeError  # noqa: E402

pytestmark = pytest.mark.unit

_SAMPLE = {
    "bytes32": b"\x11" * 32,
    "address": "0x" + "22" * 20,
    "bool": True,
}


def _sample(abi_type: str, index: int) -> Any:
    if abi_type in _SAMPLE:
        return _SAMPLE[abi_type]
    if abi_type in ("uint8", "int8"):
        return 3 + index
    if abi_type.startswith(("uint", "int")):
        return 1_700_000_000 + index
    if abi_type == "bytes":
        return b"\x01\x02"
    if abi_type == "string":
        return "text"
    raise AssertionError(abi_type)


def _abi_errors() -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for contract in ("BridgeEndpoint", "SecurityToken"):
        for item in load_abi(contract):
            if item.get("type") == "error":
                seen[item["name"]] = item
    return list(seen.values())


@pytest.mark.parametrize("error", _abi_errors(), ids=lambda e: e["name"])
def test_every_evm_custom_error_decodes_to_its_reason_and_typed_figures(
    error: dict[str, Any],
) -> None:
    types = [i["type"] for i in error["inputs"]]
    values = [_sample(t, n) for n, t in enumerate(types)]
    selector = keccak256(f"{error['name']}({','.join(types)})".encode())[:4]
    got = refusal(selector + abi_encode(types, values), "evm-a")
    assert got.reason is ErrorReason(error["name"]) and got.ledger == "evm-a"
    for inp, value in zip(error["inputs"], values, strict=True):
        shown = got.figures[inp["name"]]
        if isinstance(value, int) and not isinstance(value, bool):
            assert shown == value and got.figure(inp["name"]) == value
        elif isinstance(value, bytes):
            assert shown == "0x" + value.hex()


def test_flow_figures_are_typed_on_evm() -> None:
    types = ["uint256", "uint256"]
    sel = keccak256(b"FlowLimitExceeded(uint256,uint256)")[:4]
    got = refusal(sel + abi_encode(types, [3, 9]))
    assert (got.available, got.requested, got.not_before) == (3, 9, None)
    sel = keccak256(b"TooEarly(uint64,uint256)")[:4]
    got = refusal(sel + abi_encode(["uint64", "uint256"], [1_800_000_000, 1]))
    assert got.not_before == 1_800_000_000


@pytest.mark.security
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02",
        b"\xde\xad\xbe\xef" + b"\x00" * 32,  # unknown selector
        keccak256(b"TooEarly(uint64,uint256)")[:4] + b"\x01",  # known selector, garbled args
        bytes.fromhex("08c379a0") + b"\xff" * 5,  # Error(string), garbled
    ],
)
def test_garbled_revert_data_is_an_unknown_refusal(data: bytes) -> None:
    got = refusal(data)
    assert got.reason in (ErrorReason.UNKNOWN_REFUSAL, ErrorReason.TOO_EARLY)
    assert got.not_before is None


@pytest.mark.parametrize("reason", list(ErrorReason), ids=lambda r: r.value)
def test_every_reason_round_trips_the_chaincode_payload(reason: ErrorReason) -> None:
    message = ChaincodeError(reason.value, "d=1", {"notBefore": 5}).response_message()
    failure = chaincode_failure(f"chaincode response 500, {message}")
    if reason in (ErrorReason.CHAINCODE_INTERNAL, ErrorReason.TRANSACTION_TIME_SKEWED):
        assert isinstance(failure, Unavailable) and not isinstance(failure, LedgerRejected)
        return
    assert isinstance(failure, LedgerRejected)
    assert (failure.reason, failure.detail, failure.not_before) == (reason, "d=1", 5)


@pytest.mark.security
@pytest.mark.parametrize(
    "message",
    [
        "TooEarly: notBefore=1",  # the old free-text form: its figure is not read
        'TooEarly: {"reason": "NotAdmin", "detail": "", "figures": {}}',  # name and body differ
        'Bogus: {"reason": "Bogus", "detail": "", "figures": {}}',  # outside the closed set
        'TooEarly: {"reason": "TooEarly", "detail": 7, "figures": {}}',
        'TooEarly: {"reason": "TooEarly", "detail": "", "figures": []}',
        'TooEarly: {"reason": "TooEarly"',
        "TooEarly: [1, 2]",
    ],
)
def test_a_forged_or_garbled_chaincode_payload_is_an_unknown_refusal(message: str) -> None:
    got = chaincode_refusal(f"chaincode response 500, {message}")
    assert got is not None and got.reason is ErrorReason.UNKNOWN_REFUSAL
    assert got.not_before is None and not got.figures


def test_non_integer_chaincode_figures_are_dropped() -> None:
    body = '{"reason": "TooEarly", "detail": "", "figures": {"notBefore": "9", "x": true}}'
    got = chaincode_refusal(f"chaincode response 500, TooEarly: {body}")
    assert got is not None and got.reason is ErrorReason.TOO_EARLY and not got.figures


class _Call(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailer: bytes | None) -> None:
        md = grpc.aio.Metadata()
        if trailer is not None:
            md.add(DETAILS_KEY, trailer)
        super().__init__(code, grpc.aio.Metadata(), md, details, None)


def _over_the_wire(exc: Exception) -> _Call:
    assert isinstance(exc, LedgerRejected | PreconditionFailed | InvalidInput | Unavailable)
    status = status_details(exc, now=1_000)
    return _Call(status_for(exc), status.message, status.SerializeToString())


@pytest.mark.parametrize("reason", list(ErrorReason), ids=lambda r: r.value)
def test_every_reason_round_trips_a_grpc_status_with_error_info(reason: ErrorReason) -> None:
    sent = LedgerRejected(reason, "why", {"notBefore": 1_060, "available": 2}, "fabric-a")
    status = status_details(sent, now=1_000)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == (reason.name, DOMAIN)
    assert info.metadata["error"] == reason.value and info.metadata["ledger"] == "fabric-a"
    assert info.metadata["retryable"] == ("true" if reason in RETRYABLE_REASONS else "false")
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry) and retry.retry_delay.seconds == 60
    back = translate(_over_the_wire(sent), "relayer of x", "other")
    assert isinstance(back, LedgerRejected)
    # The ledger is the client's own (review 2 finding 8), not the peer's claim. The detail
    # is rebuilt from the validated figures; the peer's own text ("why") is kept for this
    # process's log only (review helper-114 M1).
    assert (back.reason, back.ledger) == (reason, "other")
    assert back.detail == "available=2, notBefore=1060"
    assert "why" in str(back) and "why" not in public_text(back)
    assert (back.not_before, back.available) == (1_060, 2)


@pytest.mark.parametrize(
    ("sent", "kind"),
    [
        (InvalidInput("bad"), InvalidInput),
        (NotFound("none"), NotFound),
        (StaleVersion("version 3 in force"), PreconditionFailed),
        (PreconditionFailed("not yet"), PreconditionFailed),
    ],
)
def test_bridge_level_errors_carry_their_reason(sent: Exception, kind: type) -> None:
    assert isinstance(sent, InvalidInput | NotFound | PreconditionFailed)
    status = status_details(sent)
    call = _Call(status_for(sent), status.message, status.SerializeToString())
    got = received_error(call.trailing_metadata())  # type: ignore[arg-type]
    assert got.reason is sent.kind and reason_name(got.reason) == sent.kind.value
    back = translate(call, "x")
    assert isinstance(back, kind) and not isinstance(back, LedgerRejected)


def test_reason_names_are_disjoint_and_upper_snake() -> None:
    names = {r.name for r in ErrorReason}
    assert not names & {r.value for r in BridgeReason}
    for r in BridgeReason:
        assert r.value == r.name and r.value.isupper()


def _status(*details: Any, code: int = 9, message: str = "m") -> bytes:
    packed = []
    for d in details:
        item = any_pb2.Any()
        item.Pack(d)
        packed.append(item)
    return status_pb2.Status(code=code, message=message, details=packed).SerializeToString()


def _info(reason: str, domain: str = DOMAIN, **meta: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=meta)


@pytest.mark.security
@pytest.mark.parametrize(
    "trailer",
    [
        None,
        b"\xff\xfe garbage",
        _status(),
        _status(_info("TOO_EARLY", domain="evil.example", error="TooEarly")),
        _status(_info("NOT_A_REASON", error="NotAReason")),
        _status(_info("TOO_EARLY", error="NotAdmin")),  # name and error disagree
        _status(_info("TOO_EARLY")),  # no contract error name
        _status(_info("TOO_EARLY", error="TooEarly"), _info("NOT_ADMIN", error="NotAdmin")),
    ],
    ids=["none", "garbage", "empty", "foreign", "unknown", "mismatch", "unnamed", "two"],
)
def test_forged_or_garbled_details_are_an_unknown_reason(trailer: bytes | None) -> None:
    call = _Call(grpc.StatusCode.FAILED_PRECONDITION, "TooEarly: notBefore=1", trailer)
    assert received_error(call.trailing_metadata()).reason is BridgeReason.UNKNOWN  # type: ignore[arg-type]
    back = translate(call, "relayer of x", "evm-a")
    # SECURITY: never a known ledger reason, never a figure read out of the message.
    assert isinstance(back, LedgerRejected) and back.reason is ErrorReason.UNKNOWN_REFUSAL
    assert back.not_before is None and back.ledger == "evm-a"


@pytest.mark.security
def test_hostile_figures_and_long_strings_are_bounded() -> None:
    meta = {
        "error": "TooEarly",
        "figure_notBefore": "-5",
        "figure_available": "9" * 200,
        "figure_requested": "12",
        "detail": "x" * 10_000,
        # Review helper-115 M1: names a brokerage would read in the rebuilt detail.
        "figure_Call +82-2-0000 to lift this halt": "1",
        **{f"figure_z{i}": "7" for i in range(50)},
    }
    call = _Call(grpc.StatusCode.FAILED_PRECONDITION, "m", _status(_info("TOO_EARLY", **meta)))
    back = translate(call, "x")
    assert isinstance(back, LedgerRejected) and back.reason is ErrorReason.TOO_EARLY
    assert back.not_before is None and back.available is None and back.requested == 12
    assert len(back.figures) == 4 and "+82" not in back.detail and "x" * 20 not in back.detail
    assert len(back.detail) <= 120


def test_transport_codes_stay_unavailable_whatever_the_details() -> None:
    trailer = _status(_info("TOO_EARLY", error="TooEarly"))
    back = translate(_Call(grpc.StatusCode.UNAVAILABLE, "down", trailer), "x")
    assert isinstance(back, Unavailable)


def test_every_reason_has_a_meaning_and_the_brokerage_guide_is_current() -> None:
    from bridge.rpc.reason_catalog import MEANING
    from bridge.tools.gen_error_docs import DOC, render

    assert set(MEANING) == set(ErrorReason) | set(BridgeReason)
    assert DOC.read_text() == render(), "run python -m bridge.tools.gen_error_docs"


def test_bridge_level_kinds_and_ledger_metadata_reach_the_wire() -> None:
    from bridge.coordinator.halts import Halted
    from verifiers.policy import ClaimRefused

    status = status_details(Halted("evm-b", "KR7005930003", "the lock waits"))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.metadata["ledger"], info.metadata["retryable"]) == (
        "HALTED",
        "evm-b",
        "true",
    )
    assert status_details(ClaimRefused("no")).details[0].Unpack(info)
    assert info.reason == "CLAIM_REFUSED" and "error" not in info.metadata


async def test_a_one_ledger_servicer_names_its_ledger_in_the_details() -> None:
    from bridge.rpc.errors import grpc_errors

    class Context:
        trailing: tuple[tuple[str, bytes], ...] = ()

        def set_trailing_metadata(self, md: tuple[tuple[str, bytes], ...]) -> None:
            self.trailing = md

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.code = code

    class Servicer:
        error_ledger = "fabric-a"

        @grpc_errors
        async def Submit(self, request: object, context: Context) -> None:
            raise LedgerRejected(ErrorReason.HOLDER_FROZEN, "holder=0x01")

    ctx = Context()
    await Servicer().Submit(None, ctx)
    got = received_error(ctx.trailing)
    assert (got.reason, got.ledger, got.detail) == (
        ErrorReason.HOLDER_FROZEN,
        "fabric-a",
        "holder=0x01",
    )


def test_a_precheck_refusal_carries_the_ledger_reason_it_predicts() -> None:
    sent = PreconditionFailed("sender is frozen on evm-a", ErrorReason.HOLDER_FROZEN, "evm-a")
    status = status_details(sent)
    call = _Call(status_for(sent), status.message, status.SerializeToString())
    got = received_error(call.trailing_metadata())  # type: ignore[arg-type]
    assert (got.reason, got.ledger, got.retryable) == (ErrorReason.HOLDER_FROZEN, "evm-a", False)


@pytest.mark.security
def test_sent_trailers_are_bounded_whatever_the_refusal() -> None:
    """Review 2 finding 7: the status message and metadata stay bounded, and only a few
    integer figures with short identifier names are sent (no hex, no long names)."""
    figures: dict[str, int | str] = {
        "available": 7,
        "owner": "0x" + "ab" * 20,  # hex: never sent (ADR 0015)
        "n" * 200: 1,  # a name too long
        "bad name": 2,
        "huge": 10**200,
        **{f"f{i}": i for i in range(50)},
    }
    exc = LedgerRejected(ErrorReason.TOO_EARLY, "d" * 100_000, figures, ledger="l" * 10_000)
    status = status_details(exc)
    assert len(status.message) <= 512
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    meta = dict(info.metadata)
    assert all(len(v) <= 512 for v in meta.values())
    sent = {k: v for k, v in meta.items() if k.startswith("figure_")}
    assert sent["figure_available"] == "7"
    assert 0 < len(sent) <= 4
    assert all(len(k) <= 39 and v.lstrip("-").isdigit() for k, v in sent.items())
    assert "figure_owner" not in sent and "figure_huge" not in sent
    assert len(status.SerializeToString()) < 4096


@pytest.mark.security
def test_a_peer_cannot_attribute_its_refusal_to_another_ledger() -> None:
    """Review 2 finding 8: the relayer of evm-a claims its refusal came from fabric-b; the
    coordinator's error names evm-a, the ledger that relayer serves."""
    trailer = _status(_info("HOLDER_FROZEN", error="HolderFrozen", ledger="fabric-b"))
    back = translate(_Call(grpc.StatusCode.FAILED_PRECONDITION, "m", trailer), "relayer", "evm-a")
    assert isinstance(back, LedgerRejected) and back.reason is ErrorReason.HOLDER_FROZEN
    assert back.ledger == "evm-a"
