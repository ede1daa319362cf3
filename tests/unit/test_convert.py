"""Protobuf <-> domain conversion: round trips, amount encoding and input validation."""

from __future__ import annotations

import pytest

from bridge.domain.errors import InvalidInput
from bridge.domain.legs import (
    EventPosition,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    SignatureSet,
)
from bridge.domain.terms import TransferTerms
from bridge.rpc.convert import (
    event_from_pb,
    event_to_pb,
    leg_from_pb,
    leg_status_from_pb,
    leg_status_to_pb,
    signatures_from_pb,
    signatures_to_pb,
    terms_from_pb,
    terms_to_pb,
)
from bridge.v1 import common_pb2, events_pb2, relayer_pb2

pytestmark = pytest.mark.unit


def w(byte: int) -> bytes:
    return bytes([byte]) * 32


def make_terms(amount: int = 1_000) -> TransferTerms:
    return TransferTerms(
        nonce=w(1),
        security=b"US0378331005".ljust(32, b"\0"),
        amount=amount,
        src_ledger=w(2),
        src_bridge=w(3),
        dst_ledger=w(4),
        dst_bridge=w(5),
        sender=b"\0" * 12 + b"\x06" * 20,
        recipient=b"\0" * 12 + b"\x07" * 20,
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=1_800_000_000,
    )


def wire(msg: common_pb2.Terms) -> common_pb2.Terms:
    """Serialise and parse again, as the message would travel."""
    return common_pb2.Terms.FromString(msg.SerializeToString())


# -- terms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, 255, 256, 10**18, 2**256 - 1])
def test_terms_round_trip(amount: int) -> None:
    t = make_terms(amount)
    back = terms_from_pb(wire(terms_to_pb(t)))
    assert back == t
    assert back.terms_hash == t.terms_hash


@pytest.mark.parametrize(
    ("amount", "encoded"),
    [
        (1, b"\x01"),
        (255, b"\xff"),
        (256, b"\x01\x00"),
        (2**256 - 1, b"\xff" * 32),
    ],
)
def test_amount_is_minimal_big_endian(amount: int, encoded: bytes) -> None:
    assert terms_to_pb(make_terms(amount)).amount == encoded


def test_amount_with_leading_zero_bytes_is_accepted() -> None:
    m = terms_to_pb(make_terms())
    m.amount = b"\0" * 30 + (1000).to_bytes(2, "big")
    assert terms_from_pb(m).amount == 1000


def test_amount_of_33_bytes_is_rejected() -> None:
    m = terms_to_pb(make_terms())
    m.amount = b"\x01" + b"\0" * 32
    with pytest.raises(InvalidInput, match=r"terms\.amount exceeds 32 bytes"):
        terms_from_pb(m)


def test_empty_amount_is_zero_and_rejected() -> None:
    m = terms_to_pb(make_terms())
    m.amount = b""
    with pytest.raises(InvalidInput, match="amount must be between 1"):
        terms_from_pb(m)


def test_short_word_in_terms_is_rejected() -> None:
    m = terms_to_pb(make_terms())
    m.recipient = b"\x07" * 20
    with pytest.raises(InvalidInput, match="recipient must be 32 bytes"):
        terms_from_pb(m)


def test_default_message_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        terms_from_pb(common_pb2.Terms())


# -- signatures ----------------------------------------------------------------------------


def test_signature_set_round_trip() -> None:
    s = SignatureSet(epoch=3, signatures=(b"\x01" * 65, b"\x02" * 65, b"\x03" * 65))
    m = common_pb2.Certificate.FromString(signatures_to_pb(s).SerializeToString())
    assert m.epoch == 3
    assert signatures_from_pb(m) == s


def test_empty_signature_set_round_trip() -> None:
    s = SignatureSet(epoch=1, signatures=())
    assert signatures_from_pb(signatures_to_pb(s)) == s


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_signature_of_wrong_length_is_rejected(length: int) -> None:
    m = common_pb2.Certificate(epoch=1, signatures=[b"\x01" * 65, b"\x02" * length])
    with pytest.raises(InvalidInput, match="every certificate signature must be 65 bytes"):
        signatures_from_pb(m)


# -- legs and events -----------------------------------------------------------------------


def test_leg_from_pb() -> None:
    assert leg_from_pb(1) is Leg.OUTBOUND
    assert leg_from_pb(2) is Leg.INBOUND
    for bad in (0, 3):
        with pytest.raises(InvalidInput, match="leg must be LEG_OUTBOUND or LEG_INBOUND"):
            leg_from_pb(bad)


@pytest.mark.parametrize("state", list(LegState))
def test_leg_status_round_trip(state: LegState) -> None:
    s = LegStatus(state=state, terms_hash=w(9), reason=2, height=123)
    m = relayer_pb2.LegStatus.FromString(leg_status_to_pb(s).SerializeToString())
    assert leg_status_from_pb(m) == s


def test_leg_status_with_unknown_state_is_invalid_input() -> None:
    m = relayer_pb2.LegStatus(state=42, terms_hash=w(9), reason=0, height=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        leg_status_from_pb(m)


def make_event(terms: TransferTerms | None) -> LedgerEvent:
    t = make_terms()
    return LedgerEvent(
        ledger="brokerage-a",
        position=EventPosition(height=77, index=3),
        block_hash=w(0xBB),
        tx_id="0x" + "ab" * 32,
        transfer_id=t.transfer_id,
        leg=Leg.OUTBOUND,
        state=LegState.LOCKED,
        reason=0,
        terms_hash=t.terms_hash,
        terms=terms,
    )


@pytest.mark.parametrize("with_terms", [True, False])
def test_event_round_trip(with_terms: bool) -> None:
    e = make_event(make_terms() if with_terms else None)
    m = events_pb2.LedgerEvent.FromString(event_to_pb(e).SerializeToString())
    assert m.HasField("terms") is with_terms
    assert event_from_pb("brokerage-a", m) == e


def test_event_takes_ledger_from_caller() -> None:
    m = event_to_pb(make_event(None))
    assert event_from_pb("brokerage-b", m).ledger == "brokerage-b"


@pytest.mark.parametrize("field", ["transfer_id", "terms_hash"])
def test_event_with_short_ids_is_rejected(field: str) -> None:
    m = event_to_pb(make_event(None))
    setattr(m, field, b"\x01" * 31)
    with pytest.raises(InvalidInput, match="event transfer_id and terms_hash must be 32 bytes"):
        event_from_pb("brokerage-a", m)


def test_event_with_unknown_state_or_leg_is_rejected() -> None:
    m = event_to_pb(make_event(None))
    m.state = 42  # type: ignore[assignment]
    with pytest.raises(InvalidInput, match="unknown leg state 42"):
        event_from_pb("brokerage-a", m)
    m = event_to_pb(make_event(None))
    m.leg = 0  # type: ignore[assignment]
    with pytest.raises(InvalidInput, match="leg must be"):
        event_from_pb("brokerage-a", m)


def test_event_with_malformed_terms_is_rejected() -> None:
    m = event_to_pb(make_event(make_terms()))
    m.terms.amount = b"\x01" * 33
    with pytest.raises(InvalidInput, match=r"terms\.amount exceeds 32 bytes"):
        event_from_pb("brokerage-a", m)


def test_an_event_height_past_a_signed_64_bit_column_is_refused() -> None:
    """A uint64 height no store can keep (a relayer's, honest or not) is the delivery's
    INVALID_ARGUMENT, not an untyped overflow while it is recorded."""
    from bridge.rpc.convert import MAX_HEIGHT

    m = event_to_pb(make_event(None))
    m.height = MAX_HEIGHT
    assert event_from_pb("brokerage-a", m).position.height == MAX_HEIGHT
    m.height = MAX_HEIGHT + 1
    with pytest.raises(InvalidInput, match=f"event height {MAX_HEIGHT + 1} is past"):
        event_from_pb("brokerage-a", m)


async def test_a_scanned_height_past_a_signed_64_bit_column_is_refused() -> None:
    import grpc

    from bridge.coordinator.service import EventSinkServicer
    from bridge.rpc.convert import MAX_HEIGHT
    from bridge.v1 import events_pb2
    from tests.unit.test_rpc_errors import FakeContext

    class Coordinator:
        def __init__(self) -> None:
            self.calls: list[int] = []

        async def on_events(self, ledger: str, events: object, scanned: int) -> int:
            self.calls.append(scanned)
            return 0

    coordinator = Coordinator()
    servicer = EventSinkServicer(coordinator)  # type: ignore[arg-type]
    ctx = FakeContext()
    ok = events_pb2.DeliverEventsRequest(ledger_id="brokerage-a", scanned_height=MAX_HEIGHT)
    await servicer.DeliverEvents(ok, ctx)  # type: ignore[arg-type]
    assert ctx.aborted is None and coordinator.calls == [MAX_HEIGHT]
    past = events_pb2.DeliverEventsRequest(ledger_id="brokerage-a", scanned_height=MAX_HEIGHT + 1)
    await servicer.DeliverEvents(past, ctx)  # type: ignore[arg-type]
    assert ctx.aborted is not None and ctx.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert coordinator.calls == [MAX_HEIGHT], "nothing recorded"
