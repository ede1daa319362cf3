"""Every rejection of the EVM contracts, on the real Fabric network against the chaincode.

Each refused call is endorsed by the real peers through the Gateway; the test asserts the
chaincode's error name and that the leg and balances are unchanged afterwards. The same
list runs against anvil in tests/integration/test_evm_contracts.py.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import submit_agreed
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import SECP256K1_N
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Leg, LegState, RejectReason
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.adapter import FabricAdapter, fabric_bridge_word
from bridge.ledgers.fabric.gateway import GatewayClient
from tests.integration.fabric.support import BROKER, lock_args, submit_and_wait
from tests.integration.fabric.support import BridgeEnv as Env

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CHAINCODE = "kstbneg"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-neg")
OTHER = LedgerId("evm-other")
ISIN = "KR7005930003"


def cert_json(sigs: list[bytes], epoch: int = 1) -> str:
    return json.dumps({"epoch": epoch, "signatures": ["0x" + s.hex() for s in sigs]})


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> Env:
    return await Env.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def admin(env: Env) -> AsyncIterator[GatewayClient]:
    c = env.client("Org1", "Admin")
    yield c
    await c.close()


@pytest.fixture
async def relayer(env: Env) -> AsyncIterator[GatewayClient]:
    c = env.client("Org1", "User1")
    yield c
    await c.close()


async def submit(net: FabricNetwork, client: GatewayClient, fn: str, *args: str) -> None:
    """Submit and wait until both orgs' peers committed it (the next call reads it)."""
    await submit_and_wait(net, client, CHAINCODE, fn, *args)


async def holder(env: Env, admin: GatewayClient, units: int = 0, eligible: bool = True) -> str:
    address = "0x" + secrets.token_hex(20)
    if eligible:
        await submit(env.net, admin, "SetEligible", ISIN, address, "true")
    if units:
        await submit(env.net, admin, "Issue", ISIN, address, str(units))
    return address


INSTRUCTOR = bytes(12) + BROKER.address


def word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def outbound(env: Env, sender: str, amount: int) -> TransferTerms:
    return TransferTerms(
        secrets.token_bytes(32), SecurityId(ISIN).word, amount, LEDGER.word, env.bridge,
        OTHER.word, secrets.token_bytes(32), word(sender), secrets.token_bytes(32), INSTRUCTOR,
        2_000_000_000,
    )  # fmt: skip


def inbound(env: Env, recipient: str, amount: int) -> TransferTerms:
    return TransferTerms(
        secrets.token_bytes(32), SecurityId(ISIN).word, amount, OTHER.word, secrets.token_bytes(32),
        LEDGER.word, env.bridge, secrets.token_bytes(32), word(recipient), INSTRUCTOR, 2_000_000_000,
    )  # fmt: skip


async def refused(client: GatewayClient, name: str, fn: str, *args: str) -> None:
    """The call is refused with error ``name`` (``a|b``: either, where the exact one depends
    on random bytes, e.g. whether a corrupted signature still recovers to some key)."""
    with pytest.raises(LedgerRejected) as exc:
        await submit_agreed(client, CHAINCODE, fn, list(args))
    assert exc.value.reason in name.split("|"), str(exc.value)


async def leg(client: GatewayClient, t: TransferTerms, which: Leg) -> tuple[LegState, int]:
    adapter = FabricAdapter(LEDGER, client, CHAINCODE)
    status = await adapter.get_leg(t.transfer_id, which)
    return status.state, status.reason


async def balance(client: GatewayClient, address: str) -> int:
    raw = json.loads(await client.evaluate(CHAINCODE, "HolderStatus", [ISIN, address]))
    return int(raw["balance"])


# -- source side -------------------------------------------------------------------------


@pytest.mark.security
async def test_a_lock_without_a_valid_brokerage_instruction_is_refused(
    env: Env, admin: GatewayClient, relayer: GatewayClient
) -> None:
    """The relayer alone cannot escrow a holder's units: the Lock must carry the
    instructor's signature over exactly these terms on this channel (protocol v2)."""
    alice = await holder(env, admin, 5)
    t = outbound(env, alice, 5)
    terms = codec.terms_to_json(t)
    rogue = LocalKeySigner(bytes([0x45]) * 32)
    other = lock_args(codec.terms_to_json(outbound(env, alice, 5)))[1]
    for error, instruction in (
        ("MissingInstruction", "0x"),
        ("InvalidInstruction", lock_args(terms, rogue)[1]),  # forged
        ("InvalidInstruction", other),  # another terms' instruction
    ):
        await refused(relayer, error, "Lock", terms, instruction)
    assert await leg(relayer, t, Leg.OUTBOUND) == (LegState.NONE, 0)
    assert await balance(relayer, alice) == 5
    await submit(env.net, relayer, "Lock", *lock_args(terms))
    assert (await leg(relayer, t, Leg.OUTBOUND))[0] is LegState.LOCKED


@pytest.mark.security
async def test_a_lock_by_an_unregistered_instructor_is_refused(
    env: Env, admin: GatewayClient, relayer: GatewayClient
) -> None:
    """A relayer naming its own (validly signing) key as instructor escrows nothing: only
    keys the endpoint admin registered (SetInstructor) instruct; a removed key no longer
    does, and only the admin changes the registry."""
    alice = await holder(env, admin, 5)
    rogue = LocalKeySigner(secrets.token_bytes(32))
    key = "0x" + rogue.address.hex()
    t = dataclasses.replace(outbound(env, alice, 5), instructor=bytes(12) + rogue.address)
    terms = codec.terms_to_json(t)
    await refused(relayer, "UnknownInstructor", "Lock", *lock_args(terms, rogue))
    await refused(relayer, "NotAdmin", "SetInstructor", key, "true")
    registered = json.loads(await relayer.evaluate(CHAINCODE, "IsInstructor", [key]))
    assert registered["instructor_registered"] is False
    assert await leg(relayer, t, Leg.OUTBOUND) == (LegState.NONE, 0)
    assert await balance(relayer, alice) == 5
    await submit(env.net, admin, "SetInstructor", key, "true")
    await submit(env.net, admin, "SetInstructor", key, "false")
    await refused(relayer, "UnknownInstructor", "Lock", *lock_args(terms, rogue))
    assert await balance(relayer, alice) == 5
    await submit(env.net, admin, "SetInstructor", key, "true")
    await submit(env.net, relayer, "Lock", *lock_args(terms, rogue))
    assert (await leg(relayer, t, Leg.OUTBOUND))[0] is LegState.LOCKED


async def test_lock_refusals(env: Env, admin: GatewayClient, relayer: GatewayClient) -> None:
    alice = await holder(env, admin, 5)
    t = outbound(env, alice, 5)
    stranger = env.client("Org2", "User1")
    await refused(stranger, "NotRelayer", "Lock", *lock_args(codec.terms_to_json(t)))
    await stranger.close()
    await refused(
        relayer,
        "InsufficientBalance",
        "Lock",
        *lock_args(codec.terms_to_json(outbound(env, alice, 6))),
    )
    zero = json.loads(codec.terms_to_json(t)) | {"amount": "0"}
    await refused(relayer, "ZeroAmount", "Lock", *lock_args(json.dumps(zero)))
    foreign = json.loads(codec.terms_to_json(t)) | {"src_ledger": "0x" + OTHER.word.hex()}
    await refused(relayer, "WrongLedger", "Lock", *lock_args(json.dumps(foreign)))
    # As on EVM: an instruction authorises a lock only before its deadline, by the ledger
    # time (the proposal timestamp, which the peers keep within MAX_TX_SKEW of their clocks).
    late = dataclasses.replace(t, deadline=int(time.time()) - 120)
    await refused(relayer, "DeadlinePassed", "Lock", *lock_args(codec.terms_to_json(late)))
    assert await leg(relayer, late, Leg.OUTBOUND) == (LegState.NONE, 0)
    await submit(env.net, admin, "SetFrozen", ISIN, alice, "true")
    await refused(relayer, "HolderFrozen", "Lock", *lock_args(codec.terms_to_json(t)))
    await submit(env.net, admin, "SetFrozen", ISIN, alice, "false")
    await submit(env.net, admin, "SetPaused", ISIN, "true")
    await refused(relayer, "TokenPaused", "Lock", *lock_args(codec.terms_to_json(t)))
    await submit(env.net, admin, "SetPaused", ISIN, "false")
    assert await leg(relayer, t, Leg.OUTBOUND) == (LegState.NONE, 0)
    assert await balance(relayer, alice) == 5
    await submit(env.net, relayer, "Lock", *lock_args(codec.terms_to_json(t)))
    await refused(relayer, "TransferExists", "Lock", *lock_args(codec.terms_to_json(t)))
    assert await balance(relayer, alice) == 0


async def test_admin_functions_refuse_others(env: Env, relayer: GatewayClient) -> None:
    await refused(relayer, "NotAdmin", "Issue", ISIN, "0x" + "22" * 20, "5")
    await refused(relayer, "NotAdmin", "SetRelayer", "Org1MSP:" + "00" * 32, "true")
    await refused(relayer, "NotAdmin", "SetInstructor", "0x" + "22" * 20, "true")


# -- certificate checks (on prepare) -----------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("corrupted", "NotCommitteeMember|InvalidSignature"),
        ("too_few", "TooFewSignatures"),
        ("duplicate", "SignersNotAscending"),
        ("descending", "SignersNotAscending"),
        ("non_member", "NotCommitteeMember"),
        ("wrong_epoch", "WrongEpoch"),
        ("high_s", "InvalidSignature"),
        ("other_ledger", "NotCommitteeMember"),
        ("other_chaincode", "NotCommitteeMember"),
        ("wrong_kind", "NotCommitteeMember"),
    ],
)
async def test_bad_certificates_are_refused(
    env: Env, admin: GatewayClient, relayer: GatewayClient, case: str, error: str
) -> None:
    bob = await holder(env, admin)
    t = inbound(env, bob, 3)
    good = env.sigs(ClaimKind.LOCKED, t)
    epoch = 1
    sigs: list[bytes]
    if case == "corrupted":
        sigs = [good[0][:10] + bytes([good[0][10] ^ 1]) + good[0][11:], *good[1:]]
    elif case == "too_few":
        sigs = good[:2]
    elif case == "duplicate":
        sigs = [good[0], good[0], good[1]]
    elif case == "descending":
        sigs = list(reversed(good))
    elif case == "non_member":
        outsider = LocalKeySigner(secrets.token_bytes(32))
        sigs = env.sigs(ClaimKind.LOCKED, t, signers=[*env.signers[:2], outsider])
    elif case == "wrong_epoch":
        epoch = 2
        sigs = env.sigs(ClaimKind.LOCKED, t, epoch=2)
    elif case == "high_s":
        s = int.from_bytes(good[0][32:64], "big")
        flipped = good[0][:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[0][64]])
        sigs = [flipped, *good[1:]]
    elif case == "other_ledger":
        sigs = env.sigs(ClaimKind.LOCKED, t, ledger=OTHER.word)
    elif case == "other_chaincode":
        sigs = env.sigs(ClaimKind.LOCKED, t, bridge=fabric_bridge_word(env.net.channel, "kstb2"))
    else:
        sigs = env.sigs(ClaimKind.COMMIT, t)
    await refused(relayer, error, "Prepare", codec.terms_to_json(t), cert_json(sigs, epoch))
    assert await leg(relayer, t, Leg.INBOUND) == (LegState.NONE, 0)


# -- state machine -----------------------------------------------------------------------


async def test_mint_without_lock_replay_and_release_after_mint(
    env: Env, admin: GatewayClient, relayer: GatewayClient
) -> None:
    bob = await holder(env, admin)
    t = inbound(env, bob, 4)
    commit = cert_json(env.sigs(ClaimKind.COMMIT, t))
    await refused(relayer, "BadState", "Commit", codec.terms_to_json(t), commit)  # no prepare
    assert await balance(relayer, bob) == 0
    locked = cert_json(env.sigs(ClaimKind.LOCKED, t))
    await submit(env.net, relayer, "Prepare", codec.terms_to_json(t), locked)
    await refused(relayer, "BadState", "Prepare", codec.terms_to_json(t), locked)  # replay
    await submit(env.net, relayer, "Commit", codec.terms_to_json(t), commit)
    await refused(relayer, "BadState", "Commit", codec.terms_to_json(t), commit)  # replay
    abort = cert_json(env.sigs(ClaimKind.ABORT, t))
    await refused(relayer, "BadState", "Abort", codec.terms_to_json(t), abort)  # after the mint
    assert await balance(relayer, bob) == 4, "minted exactly once"
    assert await leg(relayer, t, Leg.INBOUND) == (LegState.MINTED, 0)


async def test_release_after_burn_is_refused(
    env: Env, admin: GatewayClient, relayer: GatewayClient
) -> None:
    alice = await holder(env, admin, 2)
    t = outbound(env, alice, 2)
    await submit(env.net, relayer, "Lock", *lock_args(codec.terms_to_json(t)))
    await submit(
        env.net, relayer, "Commit", codec.terms_to_json(t), cert_json(env.sigs(ClaimKind.COMMIT, t))
    )
    abort = cert_json(env.sigs(ClaimKind.ABORT, t))
    await refused(relayer, "BadState", "Abort", codec.terms_to_json(t), abort)
    assert await balance(relayer, alice) == 0
    assert await leg(relayer, t, Leg.OUTBOUND) == (LegState.BURNED, 0)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("ineligible", RejectReason.RECIPIENT_NOT_ELIGIBLE),
        ("frozen", RejectReason.RECIPIENT_FROZEN),
        ("paused", RejectReason.TOKEN_PAUSED),
    ],
)
async def test_compliance_failures_are_recorded_rejections(
    env: Env, admin: GatewayClient, relayer: GatewayClient, setup: str, reason: RejectReason
) -> None:
    bob = await holder(env, admin, eligible=setup != "ineligible")
    if setup == "frozen":
        await submit(env.net, admin, "SetFrozen", ISIN, bob, "true")
    if setup == "paused":
        await submit(env.net, admin, "SetPaused", ISIN, "true")
    try:
        t = inbound(env, bob, 1)
        await submit(
            env.net,
            relayer,
            "Prepare",
            codec.terms_to_json(t),
            cert_json(env.sigs(ClaimKind.LOCKED, t)),
        )
    finally:
        if setup == "paused":
            await submit(env.net, admin, "SetPaused", ISIN, "false")
    assert await leg(relayer, t, Leg.INBOUND) == (LegState.REJECTED, int(reason))
    commit = cert_json(env.sigs(ClaimKind.COMMIT, t))
    await refused(relayer, "BadState", "Commit", codec.terms_to_json(t), commit)
    await submit(
        env.net, relayer, "Abort", codec.terms_to_json(t), cert_json(env.sigs(ClaimKind.ABORT, t))
    )
    assert await leg(relayer, t, Leg.INBOUND) == (LegState.ABORTED, int(reason))
    assert await balance(relayer, bob) == 0
