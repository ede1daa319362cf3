"""Certified committee rotation on the EVM endpoint, against a real anvil (ADR 0008).

Every scenario deploys its own endpoint (rotation is irreversible); time moves with anvil's
``evm_increaseTime``. A claim is checked with ``abort`` of an inbound leg that does not exist
(it records a tombstone): the cheapest step that verifies a certificate. Every refusal is
mined with a fixed gas limit, reverts with the precise custom error and leaves the
committee state (``committee()``, ``committees()``) untouched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from bridge.core.digests import rotation_digest
from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.devnet.processes import REPO_ROOT
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.legs import SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.fabric import codec
from tests.integration.conftest import ISIN, EvmLedger, _endpoint

pytestmark = [pytest.mark.integration, pytest.mark.governance]

CHAIN_ID = 31337
GAS = 2_000_000
HOUR = 3600


def keys(n: int) -> list[LocalKeySigner]:
    return sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(n)), key=lambda s: s.address
    )


@dataclass
class Env:
    node: AnvilNode
    w3: Web3
    payer: DevAccount  # submits rotations: anyone may
    epoch1: list[LocalKeySigner]
    committee1: Committee


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode("rotation", CHAIN_ID, 0, Path(tmp_path_factory.mktemp("anvil"))).start()
    try:
        w3 = deploy.connect(node.rpc_url)
        payer = DevAccount.generate()
        node.fund(payer.address)
        signers = keys(4)
        yield Env(node, w3, payer, signers, Committee(1, 3, tuple(s.address for s in signers)))
    finally:
        node.stop()


# --------------------------------------------------------------------------- helpers


def fresh(env: Env, name: str = "evm-r") -> EvmLedger:
    return _endpoint(env.node, name, env.committee1)


def now(env: Env) -> int:
    return int(env.w3.eth.get_block("latest")["timestamp"])


def time_travel(env: Env, seconds: int) -> None:
    env.node.rpc("evm_increaseTime", [seconds])
    env.node.rpc("evm_mine", [])


def domain(on: EvmLedger, chain_id: int = CHAIN_ID, ledger: str | None = None) -> ClaimDomain:
    return ClaimDomain(LedgerId(ledger or on.name).word, on.word, 0, evm_network_word(chain_id))


def rotation(
    epoch: int, members: Sequence[LocalKeySigner], activation: int, overlap: int = HOUR, t: int = 3
) -> CommitteeRotation:
    nxt = Committee(epoch + 1, t, tuple(s.address for s in members))
    return CommitteeRotation(epoch=epoch, next=nxt, activation=activation, overlap=overlap)


def signed(digest: bytes, signers: Sequence[LocalKeySigner], epoch: int) -> SignatureSet:
    return SignatureSet(epoch, tuple(s.sign_digest(digest) for s in signers))


def rotate_cert(
    on: EvmLedger, r: CommitteeRotation, signers: Sequence[LocalKeySigner], **dom: Any
) -> SignatureSet:
    return signed(r.digest(domain(on, **dom)), signers, r.epoch)


def rotate(env: Env, on: EvmLedger, r: CommitteeRotation, cert: SignatureSet) -> Any:
    return deploy.rotate_committee(env.w3, env.payer.private_key, on.endpoint, r, cert, gas=GAS)


def state(on: EvmLedger) -> tuple[Any, Any]:
    fns = on.endpoint.functions
    return (fns.committee().call(), fns.committees().call())


def refused(env: Env, on: EvmLedger, error: str, r: CommitteeRotation, cert: SignatureSet) -> str:
    """``rotateCommittee`` is mined, reverts ``error`` and changes nothing."""
    before = state(on)
    with pytest.raises(deploy.TxReverted) as info:
        rotate(env, on, r, cert)
    assert info.value.error_name == error, str(info.value)
    assert info.value.tx_hash is not None, "mined, not only estimated"
    assert state(on) == before
    return info.value.detail


def terms_to(on: EvmLedger) -> TransferTerms:
    word = evm_address_word("0x" + "11" * 20)
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=SecurityId(ISIN).word,
        amount=1,
        src_ledger=LedgerId("elsewhere").word,
        src_bridge=bytes(32),
        dst_ledger=LedgerId(on.name).word,
        dst_bridge=on.word,
        sender=word,
        recipient=word,
        instructor=word,
        deadline=2**40,
    )


def claim_result(on: EvmLedger, epoch: int, signers: Sequence[LocalKeySigner]) -> str | None:
    """Abort a fresh inbound leg with a certificate of ``epoch``: None when it verified, else
    the error name (the leg is checked to have moved only on success)."""
    t = terms_to(on)
    digest = claim_digest(
        replace(domain(on), epoch=epoch), Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash)
    )
    cert = signed(digest, signers[:3] if len(signers) > 3 else signers, epoch)
    fn = on.endpoint.functions.abort(t.as_abi_tuple(), (epoch, b"".join(cert.signatures)))
    try:
        deploy.send_tx(on.w3, on.relayer.private_key, fn, gas=GAS)
    except deploy.TxReverted as exc:
        assert on.endpoint.functions.inbound(t.transfer_id).call()[0] == 0
        return exc.error_name
    assert on.endpoint.functions.inbound(t.transfer_id).call()[0] == 5  # Aborted
    return None


async def windows(on: EvmLedger) -> tuple[EpochWindow, ...]:
    adapter = EvmAdapter(on.config())
    try:
        return await adapter.committees()
    finally:
        await adapter.close()


# --------------------------------------------------------------------------- digests


def test_solidity_rotation_digest_matches_the_core_vectors(env: Env) -> None:
    vectors = json.loads((REPO_ROOT / "bridge" / "core" / "vectors.json").read_text())
    on = fresh(env)
    fns = on.endpoint.functions

    def b(text: str) -> bytes:
        return bytes.fromhex(text[2:])

    assert len(vectors["rotations"]) >= 5
    for c in vectors["rotations"]:
        got = fns.rotationDigestFor(
            b(c["network"]), b(c["ledger"]), b(c["bridge"]), c["epoch"], c["next_epoch"],
            c["threshold"], [Web3.to_checksum_address(m) for m in c["members"]],
            c["activation"], c["overlap"],
        ).call()  # fmt: skip
        assert bytes(got) == b(c["digest"]), c


# --------------------------------------------------------------------------- the rule


async def test_rotation_overlap_then_only_the_new_epoch(env: Env) -> None:
    on = fresh(env)
    old, new = env.epoch1, keys(4)
    assert [w.committee for w in await windows(on)] == [env.committee1]
    r = rotation(1, new, activation=now(env) + 100, overlap=HOUR)
    adapter = EvmAdapter(on.config(), env.payer.private_key)
    try:
        outcome = await adapter.install_committee(r, rotate_cert(on, r, old[1:], chain_id=CHAIN_ID))
        assert not outcome.already_applied and outcome.tx_id.startswith("0x")
        receipt = env.w3.eth.get_transaction_receipt(outcome.tx_id)  # type: ignore[arg-type]
        print(f"rotateCommittee gas (4 members, t=3): {receipt['gasUsed']}")
        # Replaying the same rotation: nothing sent, reported as applied.
        nonce = env.w3.eth.get_transaction_count(env.payer.address)
        again = await adapter.install_committee(r, rotate_cert(on, r, old[1:]))
        assert again.already_applied and again.tx_id == ""
        assert env.w3.eth.get_transaction_count(env.payer.address) == nonce
        # A different committee for epoch 2: a typed refusal.
        other = rotation(1, keys(4), activation=r.activation)
        with pytest.raises(LedgerRejected) as exc:
            await adapter.install_committee(other, rotate_cert(on, other, old[1:]))
        assert exc.value.reason == "EpochAlreadyInstalled"
    finally:
        await adapter.close()
    logs = on.endpoint.events.CommitteeRotated().get_logs(from_block=receipt["blockNumber"])
    (event,) = logs
    until = event["args"]["activeUntilOld"]
    assert (event["args"]["epoch"], event["args"]["nextEpoch"]) == (1, 2)
    assert until == r.activation + HOUR
    reader = EvmAdapter(on.config())
    try:  # at a height before the rotation: the initial epoch alone
        (before,) = await reader.committees(receipt["blockNumber"] - 1)
        assert before.committee == env.committee1 and before.active_until is None
    finally:
        await reader.close()
    ws = await windows(on)
    assert [(w.committee.epoch, w.active_from, w.active_until) for w in ws] == [
        (1, 0, until),
        (2, r.activation, None),
    ]
    assert ws[1].committee == r.next
    assert on.endpoint.functions.committee().call()[0] == 2, "committee() is the latest"

    # Before activation: only the old epoch verifies.
    assert claim_result(on, 1, old) is None
    assert claim_result(on, 2, new) == "EpochNotActive"
    time_travel(env, 100)
    # Overlap: both verify; members of the wrong epoch do not.
    assert claim_result(on, 1, old) is None
    assert claim_result(on, 2, new) is None
    assert claim_result(on, 2, old) == "NotCommitteeMember"
    time_travel(env, until - now(env) - 30)
    assert claim_result(on, 1, old) is None, "still inside the window"
    time_travel(env, 60)
    assert claim_result(on, 1, old) == "WrongEpoch"
    assert claim_result(on, 2, new) is None
    assert [w.committee.epoch for w in await windows(on)] == [2]


def test_a_rotation_during_the_overlap_ends_the_oldest_epoch_at_once(env: Env) -> None:
    on = fresh(env)
    e1, e2, e3 = env.epoch1, keys(4), keys(4)
    r2 = rotation(1, e2, activation=0, overlap=10 * HOUR)
    rotate(env, on, r2, rotate_cert(on, r2, e1[:3]))
    assert claim_result(on, 1, e1) is None
    r3 = rotation(2, e3, activation=0, overlap=HOUR)
    receipt = rotate(env, on, r3, rotate_cert(on, r3, e2[:3]))
    assert claim_result(on, 1, e1) == "WrongEpoch", "at most two epochs verify"
    assert claim_result(on, 2, e2) is None
    assert claim_result(on, 3, e3) is None
    epochs = [w[0] for w in on.endpoint.functions.committees().call()]
    assert epochs == [2, 3]
    assert receipt["status"] == 1


# --------------------------------------------------------------------------- refusals


def test_rotation_refusals(env: Env) -> None:
    on = fresh(env)
    e1, new = env.epoch1, keys(4)
    at = now(env)
    good = rotation(1, new, activation=at)
    # Certificate errors, each over an otherwise valid rotation.
    refused(env, on, "TooFewSignatures", good, rotate_cert(on, good, e1[:2]))
    refused(env, on, "SignersNotAscending", good, rotate_cert(on, good, e1[2::-1]))
    outsider = keys(1)[0]
    strangers = sorted([e1[0], e1[1], outsider], key=lambda s: s.address)
    refused(env, on, "NotCommitteeMember", good, rotate_cert(on, good, strangers))
    refused(env, on, "NotCommitteeMember", good, rotate_cert(on, good, new[:3]))  # not yet
    # Domain separation: signed for another network, ledger or endpoint.
    refused(env, on, "NotCommitteeMember", good, rotate_cert(on, good, e1[:3], chain_id=1))
    refused(env, on, "NotCommitteeMember", good, rotate_cert(on, good, e1[:3], ledger="evm-x"))
    twin = fresh(env)
    refused(env, on, "NotCommitteeMember", good, rotate_cert(twin, good, e1[:3]))
    # A certificate that names another epoch.
    wrong = rotate_cert(on, good, e1[:3])
    refused(env, on, "WrongEpoch", good, SignatureSet(2, wrong.signatures))
    refused(env, on, "MalformedSignatures", good, SignatureSet(1, (b"\x01" * 64,)))
    # Malformed rotations (rotation checks come before the certificate).
    members = [s.address for s in new]
    assert raw_rotate(env, on, e1[:3], 1, 2, 2, members, at, HOUR) == "InvalidCommittee"  # 2t=n
    assert raw_rotate(env, on, e1[:3], 1, 2, 5, members, at, HOUR) == "InvalidCommittee"  # t>n
    assert raw_rotate(env, on, e1[:3], 1, 2, 0, [], at, HOUR) == "InvalidCommittee"
    zero = rotation(1, new, at)
    zero_args = replace(zero, next=Committee(2, 3, (bytes(20), *zero.next.members[1:])))
    refused(env, on, "InvalidCommittee", zero_args, rotate_cert(on, zero_args, e1[:3]))
    far = rotation(1, new, activation=at + 31 * 24 * HOUR)
    refused(env, on, "InvalidRotation", far, rotate_cert(on, far, e1[:3]))
    # A future epoch (2 -> 3 while 1 is the latest) and a skipped epoch.
    future = rotation(2, new, at)
    refused(env, on, "WrongEpoch", future, rotate_cert(on, future, e1[:3]))
    # Nothing moved: the good rotation still installs.
    rotate(env, on, good, rotate_cert(on, good, e1[:3]))
    assert on.endpoint.functions.committee().call()[0] == 2
    refused(env, on, "RotationAlreadyInstalled", good, rotate_cert(on, good, e1[:3]))
    other = rotation(1, keys(4), at)
    refused(env, on, "EpochAlreadyInstalled", other, rotate_cert(on, other, e1[:3]))


def raw_rotate(
    env: Env,
    on: EvmLedger,
    signers: Sequence[LocalKeySigner],
    epoch: int,
    next_epoch: int,
    threshold: int,
    members: Sequence[bytes],
    activation: int,
    overlap: int,
) -> str:
    """Send a rotation the domain types would refuse to build; return the endpoint's error
    (the committee state must not change)."""
    digest = rotation_digest(
        evm_network_word(CHAIN_ID), LedgerId(on.name).word, on.word, epoch, next_epoch,
        threshold, members, activation, overlap,
    )  # fmt: skip
    sigs = b"".join(s.sign_digest(digest) for s in signers)
    fn = on.endpoint.functions.rotateCommittee(
        epoch, next_epoch, threshold, [Web3.to_checksum_address(m) for m in members],
        activation, overlap, (epoch, sigs),
    )  # fmt: skip
    before = state(on)
    with pytest.raises(deploy.TxReverted) as info:
        deploy.send_tx(env.w3, env.payer.private_key, fn, gas=GAS)
    assert info.value.tx_hash is not None
    assert state(on) == before
    return info.value.error_name


def test_descending_members_and_non_adjacent_epochs_are_refused(env: Env) -> None:
    on = fresh(env)
    e1, at = env.epoch1, now(env)
    members = sorted(s.address for s in keys(4))
    desc = [members[1], members[0], *members[2:]]
    assert raw_rotate(env, on, e1[:3], 1, 2, 3, desc, at, HOUR) == "InvalidCommittee"
    assert raw_rotate(env, on, e1[:3], 1, 2, 3, [*members[:3], members[2]], at, HOUR) == (
        "InvalidCommittee"
    )
    assert raw_rotate(env, on, e1[:3], 1, 3, 3, members, at, HOUR) == "InvalidRotation"
    assert raw_rotate(env, on, e1[:3], 1, 2, 3, members, at, 0) == "InvalidRotation"
    assert raw_rotate(env, on, e1[:3], 1, 2, 3, members, at, 30 * 24 * HOUR + 1) == (
        "InvalidRotation"
    )
    assert raw_rotate(env, on, e1[:3], 0, 1, 3, members, at, HOUR) == "EpochAlreadyInstalled"


def test_stale_epochs_cannot_rotate(env: Env) -> None:
    """After 1 -> 2: a rotation certified by epoch 1 (inside or after its overlap) is
    refused, and epoch 2 may not rotate before its own activation."""
    on = fresh(env)
    e1, e2, e3 = env.epoch1, keys(4), keys(4)
    r2 = rotation(1, e2, activation=now(env) + 200, overlap=HOUR)
    rotate(env, on, r2, rotate_cert(on, r2, e1[:3]))
    # Epoch 2 is installed but not active: it cannot certify the next rotation yet.
    r3 = rotation(2, e3, activation=now(env) + 300)
    refused(env, on, "EpochNotActive", r3, rotate_cert(on, r3, e2[:3]))
    # The stale epoch 1 cannot certify 2 -> 3, inside its overlap or after.
    time_travel(env, 200)
    r3 = rotation(2, e3, activation=now(env) + 300)
    stale = SignatureSet(1, rotate_cert(on, r3, e1[:3]).signatures)
    assert claim_result(on, 1, e1) is None, "epoch 1 is inside its overlap"
    refused(env, on, "WrongEpoch", r3, stale)
    time_travel(env, HOUR)
    assert claim_result(on, 1, e1) == "WrongEpoch"
    refused(env, on, "WrongEpoch", r3, stale)
    # ... nor re-install epoch 2 differently.
    again = rotation(1, e3, activation=now(env))
    refused(env, on, "EpochAlreadyInstalled", again, rotate_cert(on, again, e1[:3]))
    # Epoch 2, now active, can.
    r3 = rotation(2, e3, activation=now(env) + 10)
    rotate(env, on, r3, rotate_cert(on, r3, e2[:3]))
    assert [w[0] for w in on.endpoint.functions.committees().call()] == [2, 3]


# --------------------------------------------------------------------------- EVM == chaincode

_FABRIC = REPO_ROOT / "contracts" / "fabric"
if str(_FABRIC) not in sys.path:
    sys.path.insert(0, str(_FABRIC))

from kstb_chaincode import protocol as cc  # noqa: E402


class Twin:
    """The chaincode's pure protocol over a memory store, fed the EVM block's timestamp."""

    def __init__(self, committee: Committee) -> None:
        self.store = cc.MemoryStore()
        self.admin = cc.identity_of("Org1MSP", b"admin")
        self.relayer = cc.identity_of("Org1MSP", b"relayer")
        self.network = b"\x77" * 32
        self.ledger = LedgerId("fabric-twin")
        self.bridge = cc.bridge_word(CHANNEL_TWIN, "kstb")
        members = ["0x" + m.hex() for m in committee.members]
        c = json.dumps(
            {"epoch": committee.epoch, "threshold": committee.threshold, "members": members}
        )
        args = [self.ledger.name, "kstb", c, "0x" + self.network.hex(), self.admin]
        self.call(
            "Init", args, None, roles=frozenset({"admin"}), pin=cc.init_parameters_digest(args)
        )
        self.call("SetRelayer", [self.relayer, "true"], None)

    def call(
        self, fn: str, args: list[str], now: int | None, *,
        roles: frozenset[str] = frozenset(), pin: str | None = None, caller: str | None = None,
    ) -> str | None:  # fmt: skip
        ctx = cc.Context(
            caller=caller or self.admin, channel_id=CHANNEL_TWIN, chaincode_name="kstb",
            caller_roles=roles, init_pin=pin, tx_time=now,
        )  # fmt: skip
        try:
            cc.execute(self.store, ctx, fn, args, lambda *_: None)
        except cc.ChaincodeError as exc:
            return exc.name
        return None

    def domain(self) -> ClaimDomain:
        return ClaimDomain(self.ledger.word, self.bridge, 0, self.network)


CHANNEL_TWIN = "bridge"


def _evm_outcome(env: Env, fn: Any, by: DevAccount | None = None) -> tuple[str | None, int]:
    """Mine ``fn``; return (None or its error name, the timestamp of the block it ran in)."""
    error: str | None = None
    tx_hash: Any = None
    try:
        receipt = deploy.send_tx(env.w3, (by or env.payer).private_key, fn, gas=GAS)
    except deploy.TxReverted as exc:
        error, tx_hash = exc.error_name, exc.tx_hash
    if error is not None:
        assert tx_hash is not None, "mined, not only estimated"
        receipt = env.w3.eth.get_transaction_receipt(tx_hash)
    return error, int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def _claim_sigs(
    t: TransferTerms, d: ClaimDomain, epoch: int, signers: Sequence[LocalKeySigner]
) -> list[bytes]:
    digest = claim_digest(
        replace(d, epoch=epoch), Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash)
    )
    return [s.sign_digest(digest) for s in signers]


def _rotation_sigs(
    d: ClaimDomain, r: dict[str, Any], signers: Sequence[LocalKeySigner]
) -> list[bytes]:
    digest = rotation_digest(
        d.network, d.ledger, d.contract, r["epoch"], r["next_epoch"], r["threshold"],
        r["members"], r["activation"], r["overlap"],
    )  # fmt: skip
    return [s.sign_digest(digest) for s in signers]


def _sigs_json(epoch: int, sigs: list[bytes]) -> str:
    return json.dumps({"epoch": epoch, "signatures": ["0x" + s.hex() for s in sigs]})


def test_the_evm_endpoint_and_the_chaincode_decide_alike(env: Env) -> None:
    """A random walk of rotations and claims, each applied to the EVM endpoint and to the
    chaincode at the same ledger time: the same outcome (success or error name) every step."""
    rnd = random.Random(20261202)
    on = fresh(env)
    twin = Twin(env.committee1)
    committees: dict[int, list[LocalKeySigner]] = {1: env.epoch1}
    latest = 1
    outcomes: list[str | None] = []
    for _ in range(120):
        op = rnd.random()
        if op < 0.2:
            time_travel(env, rnd.choice([20, 70, 150]))
            continue
        if op < 0.5:  # a claim (abort of a fresh inbound leg) of some epoch
            epoch = max(1, rnd.choice([latest - 2, latest - 1, latest, latest + 1]))
            signers = committees.get(epoch, env.epoch1)[:3]
            t_evm = terms_to(on)
            t_cc = replace(terms_to(on), dst_ledger=twin.ledger.word, dst_bridge=twin.bridge)
            sigs = b"".join(_claim_sigs(t_evm, domain(on), epoch, signers))
            fn = on.endpoint.functions.abort(t_evm.as_abi_tuple(), (epoch, sigs))
            evm_error, ts = _evm_outcome(env, fn, on.relayer)
            cert = _sigs_json(epoch, _claim_sigs(t_cc, twin.domain(), epoch, signers))
            cc_error = twin.call(
                "Abort", [codec.terms_to_json(t_cc), cert], ts, caller=twin.relayer
            )
            assert evm_error == cc_error, ("claim", epoch, latest, evm_error, cc_error)
            outcomes.append(evm_error)
            continue
        # A rotation attempt, often valid, sometimes malformed in one way.
        epoch = rnd.choice([latest] * 4 + [latest - 1, latest + 1])
        members = keys(rnd.choice([3, 4]))
        n = len(members)
        head = now(env)
        r: dict[str, Any] = {
            "epoch": epoch,
            "next_epoch": epoch + (2 if rnd.random() < 0.1 else 1),
            "threshold": rnd.choice([n // 2 + 1] * 3 + [n // 2, n + 1]),
            "members": [s.address for s in members],
            "activation": rnd.choice([0, head + 30, head + 100, head + 31 * 24 * HOUR]),
            "overlap": rnd.choice([60, 200, 60, 0, 31 * 24 * HOUR]),
        }
        current = committees.get(epoch, env.epoch1)
        chosen = rnd.choice([current[:3]] * 4 + [current[:2], current[2::-1], members[:3]])
        fn = on.endpoint.functions.rotateCommittee(
            r["epoch"], r["next_epoch"], r["threshold"],
            [Web3.to_checksum_address(a) for a in r["members"]], r["activation"], r["overlap"],
            (epoch, b"".join(_rotation_sigs(domain(on), r, chosen))),
        )  # fmt: skip
        evm_error, ts = _evm_outcome(env, fn)
        rotation_json = json.dumps({**r, "members": ["0x" + a.hex() for a in r["members"]]})
        cert = _sigs_json(epoch, _rotation_sigs(twin.domain(), r, chosen))
        cc_error = twin.call("RotateCommittee", [rotation_json, cert], ts, caller=twin.relayer)
        assert evm_error == cc_error, ("rotation", r, latest, evm_error, cc_error)
        outcomes.append(evm_error)
        if evm_error is None:
            committees[r["next_epoch"]] = members
            latest = r["next_epoch"]
    print(
        f"walk: latest epoch {latest}, outcomes {sorted(collections.Counter(map(str, outcomes)).items())}"
    )
    assert latest >= 3, "the walk rotated a few times"
    assert None in outcomes and {
        "WrongEpoch",
        "EpochNotActive",
        "InvalidCommittee",
        "InvalidRotation",
    } <= set(outcomes), outcomes


async def test_two_submitters_racing_with_the_same_rotation_both_see_it_applied(env: Env) -> None:
    """Anyone may submit: two adapters send the same rotation into one block; one installs
    it, the other's transaction reverts on-chain and is reported as already applied."""
    on = fresh(env)
    other_payer = DevAccount.generate()
    env.node.fund(other_payer.address)
    r = rotation(1, keys(4), activation=now(env))
    cert = rotate_cert(on, r, env.epoch1[:3])
    first = EvmAdapter(on.config(), env.payer.private_key)
    second = EvmAdapter(on.config(), other_payer.private_key)
    env.node.rpc("evm_setAutomine", [False])
    try:

        async def mine_when_both_sent() -> None:
            for _ in range(200):
                pending = env.node.rpc("txpool_status", [])
                if int(pending["pending"], 16) >= 2:
                    break
                await asyncio.sleep(0.05)
            env.node.rpc("evm_mine", [])

        a, b, _ = await asyncio.gather(
            first.install_committee(r, cert),
            second.install_committee(r, cert),
            mine_when_both_sent(),
        )
    finally:
        env.node.rpc("evm_setAutomine", [True])
        await first.close()
        await second.close()
    assert sorted([a.already_applied, b.already_applied]) == [False, True]
    assert on.endpoint.functions.committee().call()[0] == 2
    installed = next(o for o in (a, b) if not o.already_applied)
    block = env.w3.eth.get_block(installed.height)
    statuses = sorted(
        env.w3.eth.get_transaction_receipt(h)["status"] for h in block["transactions"]
    )
    assert statuses == [0, 1], "both were mined in one block; the loser reverted"
