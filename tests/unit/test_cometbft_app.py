"""The CometBFT application's rules without a node: the envelope (forged, cross-chain,
malformed, malleated), nonces (replay refused, consumed on refusal), atomic refusals,
deterministic app hashes, restart from the store, the pinned code, queries at a height, and
the committed ABCI stubs against the pinned CometBFT protos (ADR 0018)."""

from __future__ import annotations

import json
import os
import runpy
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.core.reasons import ErrorReason
from bridge.core.signatures import SECP256K1_N
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.cometbft.envelope import (
    EnvelopeCode,
    EnvelopeError,
    TxBody,
    account_id,
    canonical,
    decode,
    reason_code,
    reason_of,
    sign,
)

ROOT = Path(__file__).resolve().parents[2]
for sub in ("contracts/fabric", "contracts/cometbft"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from kstb_cometbft.app import App, CodeMismatch  # noqa: E402
from kstb_cometbft.store import VersionedStore  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.cometbft, pytest.mark.security]

CHAIN = "kstb-unit-1"
ISIN = "KR7005930003"
ADMIN = LocalKeySigner(bytes([0x11]) * 32)
OTHER = LocalKeySigner(bytes([0x22]) * 32)
T0 = 1_800_000_000


def _genesis(fingerprint: str) -> bytes:
    members = sorted(LocalKeySigner(bytes([i]) * 32).address for i in range(1, 5))
    committee = {"epoch": 1, "threshold": 3, "members": ["0x" + m.hex() for m in members]}
    gov = {"issuer": "IssuerOrg", "admin_orgs": ["IssuerOrg"], "quorum": 1}
    return canonical(
        {
            "fingerprint": fingerprint,
            "accounts": {account_id(ADMIN.address): {"org": "IssuerOrg", "roles": ["admin"]}},
            "init": {
                "ledger_name": "unit-cmt",
                "app_name": "kstb",
                "committee": json.dumps(committee, sort_keys=True, separators=(",", ":")),
                "network": "0x" + "ab" * 32,
                "governance": json.dumps(gov, sort_keys=True, separators=(",", ":")),
            },
        }
    )


def _tx(signer: LocalKeySigner, nonce: int, function: str, *args: str, chain: str = CHAIN) -> bytes:
    return sign(TxBody(chain, function, tuple(args), nonce, signer.address), signer)


def _app(tmp_path: Path) -> App:
    app = App(VersionedStore(tmp_path / "app.sqlite"))
    app.init_chain(CHAIN, _genesis(app.fingerprint), T0)
    return app


def _block(app: App, *txs: bytes) -> list[int]:
    height = app.info().height + 1
    results, _ = app.finalize_block(height, T0 + height, list(txs))
    app.commit()
    return [r.code for r in results]


def _supply(app: App, height: int = 0) -> dict[str, str]:
    r = app.query("/q/Supply", canonical([ISIN]), height)
    assert r.code == 0, r.log
    return dict(json.loads(r.value))


# -- envelope --------------------------------------------------------------------------------
def test_reason_codes_are_distinct_and_outside_the_envelope_codes() -> None:
    codes = {reason_code(r) for r in ErrorReason}
    assert len(codes) == len(ErrorReason)
    assert all(c >= 1000 for c in codes)
    assert all(reason_of(reason_code(r)) is r for r in ErrorReason)
    assert reason_of(int(EnvelopeCode.BAD_NONCE)) is None


def test_forged_signature_is_refused() -> None:
    body = TxBody(CHAIN, "RegisterSecurity", (ISIN,), 0, ADMIN.address)
    raw = json.loads(sign(body, ADMIN))
    raw["sig"] = "0x" + OTHER.sign_digest(body.digest()).hex()  # another key signs it
    with pytest.raises(EnvelopeError) as err:
        decode(canonical(raw), CHAIN)
    assert err.value.code is EnvelopeCode.BAD_SIGNATURE


def test_a_body_naming_another_signer_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="another signer"):
        sign(TxBody(CHAIN, "Issue", (), 0, ADMIN.address), OTHER)


def test_cross_chain_replay_is_refused() -> None:
    with pytest.raises(EnvelopeError) as err:
        decode(_tx(ADMIN, 0, "RegisterSecurity", ISIN, chain="other-chain"), CHAIN)
    assert err.value.code is EnvelopeCode.WRONG_CHAIN


def test_malleated_high_s_twin_is_refused() -> None:
    body = TxBody(CHAIN, "RegisterSecurity", (ISIN,), 0, ADMIN.address)
    obj = json.loads(sign(body, ADMIN))
    sig = bytes.fromhex(obj["sig"][2:])
    s = SECP256K1_N - int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + s.to_bytes(32, "big") + bytes([55 - sig[64]])
    obj["sig"] = "0x" + twin.hex()
    with pytest.raises(EnvelopeError) as err:
        decode(canonical(obj), CHAIN)
    assert err.value.code is EnvelopeCode.BAD_SIGNATURE


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"{}", b'{"body":{},"sig":"0x00"}', b"x" * 70_000],
    ids=["not-json", "empty", "bad-body", "too-large"],
)
def test_malformed_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as err:
        decode(raw, CHAIN)
    assert err.value.code is EnvelopeCode.MALFORMED


def test_non_canonical_encoding_is_refused() -> None:
    raw = _tx(ADMIN, 0, "RegisterSecurity", ISIN)
    spaced = json.dumps(json.loads(raw), sort_keys=True).encode()  # same content, spaces
    with pytest.raises(EnvelopeError) as err:
        decode(spaced, CHAIN)
    assert err.value.code is EnvelopeCode.MALFORMED


# -- the application ---------------------------------------------------------------------------
def test_replayed_transaction_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path)
    holder = "0x" + "33" * 20
    assert _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN)) == [0]
    assert _block(app, _tx(ADMIN, 1, "SetEligible", ISIN, holder, "true")) == [0]
    issue = _tx(ADMIN, 2, "Issue", ISIN, holder, "100")
    assert _block(app, issue) == [0]
    assert app.check_tx(issue).code == EnvelopeCode.BAD_NONCE  # mempool refuses it
    assert _block(app, issue) == [int(EnvelopeCode.BAD_NONCE)]  # and so does the block
    assert _supply(app)["total_supply"] == "100"


def _relayer(app: App, signer: LocalKeySigner, admin_nonce: int) -> None:
    identity = f"key:{account_id(signer.address)}"
    assert _block(app, _tx(ADMIN, admin_nonce, "SetRelayer", identity, "true")) == [0]


def test_a_stranger_key_is_refused_before_it_writes_anything(tmp_path: Path) -> None:
    app = _app(tmp_path)
    stranger = LocalKeySigner(secrets.token_bytes(32))
    tx = _tx(stranger, 0, "RegisterSecurity", ISIN)
    assert app.check_tx(tx).code == EnvelopeCode.UNKNOWN_ACCOUNT
    assert _block(app, tx) == [int(EnvelopeCode.UNKNOWN_ACCOUNT)]  # a proposer included it
    assert app.query("/nonce", account_id(stranger.address).encode(), 0).value == b"0"
    assert app.store.scan("n/", app.info().height) == []


def test_a_refused_call_consumes_the_nonce_and_writes_nothing_else(tmp_path: Path) -> None:
    app = _app(tmp_path)
    _relayer(app, OTHER, 0)
    # OTHER is a relayer, no admin: NotAdmin, by code; its nonce is used up, nothing else.
    refused = _tx(OTHER, 0, "RegisterSecurity", ISIN)
    assert _block(app, refused) == [reason_code(ErrorReason.NOT_ADMIN)]
    r = app.query("/q/Supply", canonical([ISIN]), 0)
    assert r.code == reason_code(ErrorReason.UNKNOWN_SECURITY)
    assert app.query("/nonce", account_id(OTHER.address).encode(), 0).value == b"1"
    assert _block(app, refused) == [int(EnvelopeCode.BAD_NONCE)]  # never replayable


def test_a_query_function_is_not_a_transaction(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert app.check_tx(_tx(ADMIN, 0, "Supply", ISIN)).code == EnvelopeCode.READ_ONLY_FUNCTION


def test_a_gap_in_nonces_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert _block(app, _tx(ADMIN, 5, "RegisterSecurity", ISIN)) == [int(EnvelopeCode.BAD_NONCE)]


def test_app_hash_is_deterministic_and_restart_continues(tmp_path: Path) -> None:
    relayer = _tx(ADMIN, 0, "SetRelayer", f"key:{account_id(OTHER.address)}", "true")
    txs = [
        relayer,
        _tx(ADMIN, 1, "RegisterSecurity", ISIN),
        _tx(OTHER, 0, "RegisterSecurity", ISIN),
    ]
    hashes = []
    for name in ("a", "b"):
        app = _app(tmp_path / name)
        results, app_hash = app.finalize_block(1, T0 + 1, txs)
        app.commit()
        hashes.append(app_hash)
        assert [r.code for r in results] == [0, 0, reason_code(ErrorReason.NOT_ADMIN)]
    assert hashes[0] == hashes[1]
    # Restart: a new process on the same store knows the last block and goes on.
    again = App(VersionedStore(tmp_path / "a" / "app.sqlite"))
    assert again.info().height == 1
    assert again.info().app_hash == hashes[0]
    assert _block(again, _tx(ADMIN, 2, "SetPaused", ISIN, "true")) == [0]


def test_uncommitted_block_is_not_persisted(tmp_path: Path) -> None:
    app = _app(tmp_path)
    _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN))
    app.finalize_block(2, T0 + 2, [_tx(ADMIN, 1, "SetPaused", ISIN, "true")])  # crash here
    again = App(VersionedStore(tmp_path / "app.sqlite"))
    assert again.info().height == 1  # CometBFT replays block 2 from its own store


def test_other_code_refuses_the_chain(tmp_path: Path) -> None:
    app = App(VersionedStore(tmp_path / "app.sqlite"))
    with pytest.raises(CodeMismatch):
        app.init_chain(CHAIN, _genesis("00" * 32), T0)
    good = _app(tmp_path / "ok")
    _block(good, _tx(ADMIN, 0, "RegisterSecurity", ISIN))
    with pytest.raises(CodeMismatch):
        App(VersionedStore(tmp_path / "ok" / "app.sqlite"), fingerprint="ff" * 32)


def test_queries_read_exactly_the_state_at_a_height(tmp_path: Path) -> None:
    app = _app(tmp_path)
    holder = "0x" + "44" * 20
    _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN))
    _block(app, _tx(ADMIN, 1, "SetEligible", ISIN, holder, "true"))
    _block(app, _tx(ADMIN, 2, "Issue", ISIN, holder, "7"))
    _block(app, _tx(ADMIN, 3, "Issue", ISIN, holder, "5"))
    assert _supply(app, 3)["total_supply"] == "7"
    assert _supply(app)["total_supply"] == "12"
    r = app.query("/q/Supply", canonical([ISIN]), 99)
    assert r.code == reason_code(ErrorReason.INVALID_ARGUMENT)


def test_committed_abci_stubs_match_the_pinned_protos() -> None:
    gen = ROOT / "contracts" / "cometbft" / "gen_abci.py"
    version = runpy.run_path(str(gen))["version"]()
    if not (ROOT / ".cache" / "cometbft" / version / "proto").is_dir():
        if os.environ.get("CI"):
            pytest.fail("cometbft protos absent: CI builds deploy/cometbft/build.sh")
        pytest.skip("cometbft protos absent (run deploy/cometbft/build.sh)")
    out = subprocess.run(
        [sys.executable, str(gen), "--check"], check=False, capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_relayer_key_gets_no_admin_role(tmp_path: Path) -> None:
    app = _app(tmp_path)
    _relayer(app, OTHER, 0)
    stranger = f"key:{account_id(LocalKeySigner(secrets.token_bytes(32)).address)}"
    codes = _block(app, _tx(OTHER, 0, "SetRelayer", stranger, "true"))
    assert codes == [reason_code(ErrorReason.NOT_ADMIN)]


# -- attacker review (s17): the chain must never halt on a client's bytes ---------------------
NESTED = b"[" * 5000


def test_deeply_nested_json_is_malformed_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(EnvelopeError) as err:
        decode(NESTED, CHAIN)
    assert err.value.code is EnvelopeCode.MALFORMED
    app = _app(tmp_path)
    assert app.check_tx(NESTED).code == EnvelopeCode.MALFORMED  # CheckTx answers, no raise
    nested_obj = b'{"body":' + b"[" * 5000 + b"]" * 5000 + b',"sig":"0x00"}'
    assert app.check_tx(nested_obj).code == EnvelopeCode.MALFORMED
    # A proposer includes it: the block still finalizes, the next tx runs, blocks go on.
    ok = _tx(ADMIN, 0, "RegisterSecurity", ISIN)
    assert _block(app, NESTED, nested_obj, ok) == [int(EnvelopeCode.MALFORMED)] * 2 + [0]
    assert app.info().height == 1
    assert _supply(app)["total_supply"] == "0"


def test_an_unexpected_decode_error_is_a_fixed_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kstb_cometbft.app as app_module

    app = _app(tmp_path)

    def broken(raw: bytes, chain_id: str) -> object:
        raise KeyError("bug")

    monkeypatch.setattr(app_module, "decode", broken)
    assert app.check_tx(b"{}").code == EnvelopeCode.MALFORMED
    assert _block(app, b"{}") == [int(EnvelopeCode.MALFORMED)]
    assert app.store.scan("n/", app.info().height) == []


@pytest.mark.parametrize(
    "identity",
    ["\ud800:" + "ab" * 32, "Org\x00:" + "ab" * 32, "Org\u00e9:" + "ab" * 32, " x:" + "ab" * 32],
    ids=["lone-surrogate", "nul", "non-ascii", "space"],
)
def test_a_relayer_identity_that_is_not_an_msp_id_is_refused_and_commit_succeeds(
    tmp_path: Path, identity: str
) -> None:
    app = _app(tmp_path)
    codes = _block(app, _tx(ADMIN, 0, "SetRelayer", identity, "true"))
    assert codes == [reason_code(ErrorReason.INVALID_ARGUMENT)]
    assert app.info().height == 1  # committed: the chain goes on
    assert app.store.scan("s/relayer/", 1) == [] and app.store.scan("s/admin", 1) == []
    assert app.query("/nonce", account_id(ADMIN.address).encode(), 0).value == b"1"
    assert _block(app, _tx(ADMIN, 1, "RegisterSecurity", ISIN)) == [0]


def test_a_key_that_is_not_printable_ascii_refuses_the_whole_call(tmp_path: Path) -> None:
    from kstb_chaincode.protocol import ChaincodeError
    from kstb_cometbft.app import _View

    app = _app(tmp_path)
    overlay: dict[str, bytes | None] = {"s/kept": b"1"}
    view = _View(app.store, app.info().height, overlay)
    saved = view.snapshot()
    view.put("s/ok", b"1")
    with pytest.raises(ChaincodeError) as err:
        view.put("s/relayer/\ud800:" + "ab" * 32, b"true")
    assert err.value.name == "InvalidArgument"
    view.restore(saved)
    assert overlay == {"s/kept": b"1"}


@pytest.mark.parametrize("fatal", [MemoryError, RecursionError])
def test_machine_dependent_errors_stop_the_node_instead_of_refusing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fatal: type[BaseException]
) -> None:
    import kstb_cometbft.app as app_module

    app = _app(tmp_path)

    def exhausted(*_a: object) -> bytes:
        raise fatal()

    monkeypatch.setattr(app_module, "execute", exhausted)
    with pytest.raises(fatal):
        app.finalize_block(1, T0 + 1, [_tx(ADMIN, 0, "RegisterSecurity", ISIN)])
    assert app.info().height == 0  # nothing committed: the block is replayed after restart
    monkeypatch.undo()
    again = App(VersionedStore(tmp_path / "app.sqlite"))
    again.init_chain(CHAIN, _genesis(again.fingerprint), T0)
    assert _block(again, _tx(ADMIN, 0, "RegisterSecurity", ISIN)) == [0]


def test_a_deterministic_bug_is_an_internal_refusal_that_writes_only_the_nonce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kstb_cometbft.app as app_module

    app = _app(tmp_path)
    real = app_module.execute

    def buggy(store: object, ctx: object, function: str, args: object, emit: object) -> bytes:
        store.put("half", b"applied")  # type: ignore[attr-defined]
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(app_module, "execute", buggy)
    assert _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN)) == [
        reason_code(ErrorReason.CHAINCODE_INTERNAL)
    ]
    assert app.store.get("s/half", 1) is None
    monkeypatch.setattr(app_module, "execute", real)
    assert _block(app, _tx(ADMIN, 1, "RegisterSecurity", ISIN)) == [0]


def test_check_tx_admits_only_nonces_within_the_window(tmp_path: Path) -> None:
    from kstb_cometbft.app import NONCE_WINDOW

    app = _app(tmp_path)
    assert app.check_tx(_tx(ADMIN, 0, "RegisterSecurity", ISIN)).code == 0  # genesis account
    assert app.check_tx(_tx(ADMIN, NONCE_WINDOW - 1, "RegisterSecurity", ISIN)).code == 0
    far = _tx(ADMIN, NONCE_WINDOW, "RegisterSecurity", ISIN)
    assert app.check_tx(far).code == EnvelopeCode.BAD_NONCE
    assert app.check_tx(_tx(ADMIN, 2**62, "RegisterSecurity", ISIN)).code == EnvelopeCode.BAD_NONCE


def test_a_proposal_carrying_a_tx_that_consumes_nothing_is_refused(tmp_path: Path) -> None:
    """Attacker review 3: a proposer once filled blocks for free with bad-nonce, malformed,
    forged or strangers' transactions (each refused in FinalizeBlock, none consuming)."""
    app = _app(tmp_path)
    _relayer(app, OTHER, 0)
    good = [_tx(ADMIN, 1, "RegisterSecurity", ISIN), _tx(ADMIN, 2, "SetPaused", ISIN, "true")]
    stranger = LocalKeySigner(secrets.token_bytes(32))
    forged = json.loads(_tx(ADMIN, 3, "SetPaused", ISIN, "false"))
    forged["sig"] = "0x" + OTHER.sign_digest(bytes(32)).hex()
    bad = {
        "gap": _tx(ADMIN, 4, "SetPaused", ISIN, "false"),
        "replay": _tx(ADMIN, 0, "SetPaused", ISIN, "false"),
        "twice": good[1],
        "malformed": NESTED,
        "forged": canonical(forged),
        "stranger": _tx(stranger, 0, "RegisterSecurity", ISIN),
        "query": _tx(OTHER, 0, "Supply", ISIN),
        "other-chain": _tx(ADMIN, 3, "SetPaused", ISIN, "false", chain="other-1"),
    }
    assert app.proposal_ok(good)
    assert app.proposal_ok([])
    for name, raw in bad.items():
        assert not app.proposal_ok([*good, raw]), name
        # the proposer leaves them out and keeps the good ones, in order
        assert app.prepare_proposal([raw, *good, raw], 10**6) == good, name
    assert app.prepare_proposal(good, len(good[0])) == good[:1]  # byte budget
    assert app.info().height == 1  # judging proposals writes nothing
    assert _block(app, *good) == [0, 0]


def test_the_first_block_may_carry_genesis_accounts_transactions(tmp_path: Path) -> None:
    app = _app(tmp_path)
    tx = _tx(ADMIN, 0, "RegisterSecurity", ISIN)
    assert app.check_tx(tx).code == 0 and app.proposal_ok([tx])


def _tx_until(signer: LocalKeySigner, nonce: int, until: int, function: str, *args: str) -> bytes:
    return sign(TxBody(CHAIN, function, tuple(args), nonce, signer.address, until), signer)


def test_a_transaction_refused_for_its_nonce_is_dead_after_valid_until(tmp_path: Path) -> None:
    """Attacker review 5: a transaction refused for a nonce gap once stayed replayable
    forever (it consumed nothing); now it is dead once the chain passes its valid_until."""
    app = _app(tmp_path)
    early = _tx_until(ADMIN, 1, 2, "SetPaused", ISIN, "true")
    assert _block(app, early) == [int(EnvelopeCode.BAD_NONCE)]  # height 1: a gap
    assert _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN)) == [0]  # height 2
    assert app.check_tx(early).code == EnvelopeCode.EXPIRED  # nonce 1 is next, but too late
    assert not app.proposal_ok([early])
    assert app.prepare_proposal([early], 10**6) == []
    assert _block(app, early) == [int(EnvelopeCode.EXPIRED)]  # height 3 > 2: nothing runs
    assert app.query("/nonce", account_id(ADMIN.address).encode(), 0).value == b"1"
    assert app.store.scan("s/", 3) == app.store.scan("s/", 2)  # nothing paused, nothing


def test_valid_until_is_inclusive(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert app.check_tx(_tx_until(ADMIN, 0, 1, "RegisterSecurity", ISIN)).code == 0
    assert _block(app, _tx_until(ADMIN, 0, 1, "RegisterSecurity", ISIN)) == [0]


@pytest.mark.parametrize("until", [-1, True, "9", 2**63])
def test_a_malformed_valid_until_is_refused(until: object) -> None:
    obj = json.loads(_tx(ADMIN, 0, "RegisterSecurity", ISIN))
    obj["body"]["valid_until"] = until
    with pytest.raises(EnvelopeError) as err:
        decode(canonical(obj), CHAIN)
    assert err.value.code is EnvelopeCode.MALFORMED


def test_queries_do_not_wait_for_the_consensus_lock(tmp_path: Path) -> None:
    """Attacker review 6: queries (the node's RPC is unauthenticated) once shared the lock
    of FinalizeBlock and Commit; now they read through their own read-only connection."""
    import threading

    from kstb_cometbft.server import AbciServicer, abci  # (the stubs' import path)

    app = _app(tmp_path)
    _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN))
    app.reader = VersionedStore(tmp_path / "app.sqlite", readonly=True)
    servicer = AbciServicer(app)
    answers: list[object] = []
    with servicer._lock:  # a long FinalizeBlock holds it
        t = threading.Thread(
            target=lambda: answers.append(
                servicer.Query(abci.QueryRequest(path="/q/Supply", data=canonical([ISIN])), None)
            )
        )
        t.start()
        t.join(5)
        assert answers, "Query waited for the consensus lock"
    assert json.loads(answers[0].value)["total_supply"] == "0"  # type: ignore[attr-defined]
    # the reader follows the writer's commits
    _block(app, _tx(ADMIN, 1, "SetEligible", ISIN, "0x" + "44" * 20, "true"))
    _block(app, _tx(ADMIN, 2, "Issue", ISIN, "0x" + "44" * 20, "3"))
    assert _supply(app)["total_supply"] == "3"
    with pytest.raises(Exception, match="readonly"):
        app.reader._db.execute("DELETE FROM blocks")


def test_an_oversized_query_is_refused_unread(tmp_path: Path) -> None:
    from kstb_cometbft.app import MAX_QUERY_BYTES

    app = _app(tmp_path)
    _block(app, _tx(ADMIN, 0, "RegisterSecurity", ISIN))
    big = canonical(["x" * MAX_QUERY_BYTES])
    assert app.query("/q/Supply", big, 0).code == reason_code(ErrorReason.INVALID_ARGUMENT)


def test_the_governance_disables_and_re_enables_a_genesis_account(tmp_path: Path) -> None:
    """Attacker review 7: a genesis account once could never be revoked."""
    second = LocalKeySigner(bytes([0x33]) * 32)
    app = App(VersionedStore(tmp_path / "app.sqlite"))
    genesis = json.loads(_genesis(app.fingerprint))
    genesis["accounts"][account_id(second.address)] = {"org": "IssuerOrg", "roles": ["admin"]}
    app.init_chain(CHAIN, canonical(genesis), T0)
    identity = f"IssuerOrg:{account_id(second.address)}"
    assert _block(app, _tx(ADMIN, 0, "SetRelayer", identity, "false")) == [0]
    refused = _tx(second, 0, "RegisterSecurity", ISIN)
    assert app.check_tx(refused).code == EnvelopeCode.UNKNOWN_ACCOUNT
    assert not app.proposal_ok([refused])
    assert _block(app, refused) == [int(EnvelopeCode.UNKNOWN_ACCOUNT)]
    assert app.query("/nonce", account_id(second.address).encode(), 0).value == b"0"
    assert _block(app, _tx(ADMIN, 1, "SetRelayer", identity, "true")) == [0]
    assert _block(app, refused) == [0]  # enabled again


def test_a_cometbft_validator_with_the_other_check_setting_has_another_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So it refuses the chain's genesis instead of computing another app hash."""
    from kstb_cometbft.fingerprint import code_fingerprint

    monkeypatch.setenv("KSTB_CHAINCODE_CHECK_ASSUMED", "1")
    checked = code_fingerprint()
    monkeypatch.setenv("KSTB_CHAINCODE_CHECK_ASSUMED", "0")
    assert code_fingerprint() != checked
    monkeypatch.delenv("KSTB_CHAINCODE_CHECK_ASSUMED")
    assert len(code_fingerprint()) == 64 and code_fingerprint() != checked
