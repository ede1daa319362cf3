"""Exact supply reads at scale (issue 14 item 5, ADR 0024), on the pure chaincode protocol.

``Supply`` answers from per-security counters that every write keeps in step; these tests
check the counters against the keys themselves (the ground truth an unbounded scan would
sum) after every kind of write, and the migration of state written before the counters
existed: refused (SupplyNotCounted) until ``CountSupply`` has counted it, in bounded steps
that never take a short page for the end, exact even with writes between the steps.
"""

from __future__ import annotations

import importlib
import json
import random
from dataclasses import replace
from typing import Any

import pytest

from bridge.domain.claims import ClaimKind
from tests.unit.test_fabric_chaincode_protocol import (
    ISIN,
    ORG_ADMINS,
    OTHER_ISIN,
    Env,
    Ledger,
    account,
    cert,
    env,
    finish,
    identity,
    lock,
    make_terms,
    prepare,
    tj,
    word_of,
)
from tests.unit.test_fabric_chaincode_protocol import p as protocol

pytestmark = [pytest.mark.unit, pytest.mark.batch]

__all__ = ["env"]  # the fixture, re-used

FAMILY_FIELDS = {
    "holder": "holders",
    "escrow": "escrowed",
    "prepared": "prepared",
    "parked": "parked",
    "burned": "burned_out",
    "minted": "minted_in",
}


class CappedStore(protocol.MemoryStore):
    """A store whose range reads stop after ``cap`` records whatever the limit asked, as a
    Fabric peer does at ``totalQueryLimit`` (silently)."""

    def __init__(self, data: dict[str, bytes], cap: int) -> None:
        super().__init__()
        self.data = data
        self.cap = cap

    def _range(self, prefix: str, after: str) -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix) and k > after)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return self._range(prefix, "")[: self.cap]

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        return self._range(prefix, after)[: min(limit, self.cap)]


def truth(on: Ledger, isin: Any = ISIN) -> dict[str, int]:
    """The figures summed from every amount key (what an uncapped scan would answer)."""
    sec = isin.word.hex()
    sums = dict.fromkeys(FAMILY_FIELDS.values(), 0)
    for key, value in on.store.data.items():
        family, _, rest = key.partition("/")
        if family in FAMILY_FIELDS and rest.startswith(sec + "/"):
            units = int(json.loads(value)["balance"]) if family == "holder" else int(value)
            sums[FAMILY_FIELDS[family]] += units
    return {
        "total_supply": sums["holders"] + sums["escrowed"] + sums["parked"],
        "escrowed": sums["escrowed"],
        "prepared": sums["prepared"],
        "burned_out": sums["burned_out"],
        "minted_in": sums["minted_in"],
    }


def supply(on: Ledger, isin: Any = ISIN) -> dict[str, int]:
    return {k: int(v) for k, v in on.call("x:y", "Supply", isin.isin).items()}


def exact(env: Env) -> None:
    for on in env.ledgers():
        assert supply(on) == truth(on), on.name


def legacy(on: Ledger) -> None:
    """Make ``on``'s state what a chaincode from before the counters wrote: no tally keys."""
    for key in [k for k in on.store.data if k.startswith("tally/")]:
        del on.store.data[key]


def refused(on: Ledger, caller: str, fn: str, *args: str) -> protocol.ChaincodeError:
    before = dict(on.store.data)
    with pytest.raises(protocol.ChaincodeError) as exc:
        on.call(caller, fn, *args)
    assert on.store.data == before, "a refused call wrote nothing"
    return exc.value


def holders(env: Env, n: int, units: int = 7) -> list[str]:
    out = []
    for _ in range(n):
        h = account()
        env.a.call(env.admin, "SetEligible", ISIN.isin, h, "true")
        env.a.call(env.admin, "Issue", ISIN.isin, h, str(units))
        out.append(h)
    return out


def transfer(env: Env, sender: str, amount: int, outcome: str) -> None:
    """One A -> B transfer of ``sender``: "commit", "abort", "locked" or "prepared"."""
    t = replace(make_terms(env, amount=amount), sender=word_of(sender))
    lock(env, t)
    if outcome == "locked":
        return
    prepare(env, t)
    if outcome == "prepared":
        return
    claim = ClaimKind.COMMIT if outcome == "commit" else ClaimKind.ABORT
    finish(env, env.b, claim, t)
    finish(env, env.a, claim, t)


def count_all(on: Ledger, admin: str, page: int) -> list[dict[str, Any]]:
    steps = []
    while True:
        step = on.call(admin, "CountSupply", ISIN.isin, str(page))
        steps.append(step)
        if step["done"]:
            return steps
        assert len(steps) < 10_000


# --------------------------------------------------------------------------- counters


def test_the_counters_equal_the_keys_after_every_kind_of_write(env: Env) -> None:
    exact(env)
    senders = holders(env, 3)
    exact(env)
    env.a.call(env.admin, "Redeem", ISIN.isin, senders[0], "2")
    exact(env)
    for outcome in ("commit", "abort", "locked", "prepared"):
        transfer(env, senders[1], 1, outcome)
        exact(env)
    # Parking: the recipient loses eligibility after prepare, the commit parks the units,
    # an issuer admin releases them to another holder.
    t = make_terms(env, amount=3)
    lock(env, t)
    prepare(env, t)
    env.b.call(env.admin, "SetEligible", ISIN.isin, env.bob, "false")
    before_park = supply(env.b)["total_supply"]
    finish(env, env.b, ClaimKind.COMMIT, t)
    exact(env)
    assert supply(env.b)["total_supply"] == before_park + 3  # parked units are supply
    erin = account()
    env.b.call(env.admin, "SetEligible", ISIN.isin, erin, "true")
    env.b.call(env.admin, "ReleaseParked", "0x" + t.transfer_id.hex(), erin)
    exact(env)
    # Eligibility and freeze changes move no unit and touch no counter.
    before = {k: v for k, v in env.a.store.data.items() if k.startswith("tally/")}
    env.a.call(env.admin, "SetFrozen", ISIN.isin, senders[2], "true")
    assert {k: v for k, v in env.a.store.data.items() if k.startswith("tally/")} == before


def test_a_transaction_writes_one_counter_shard(env: Env) -> None:
    """Every transaction's deltas go to one shard per security (1/TALLY_SHARDS conflicts)."""
    sec = ISIN.word.hex()
    for _ in range(5):
        before = {k: v for k, v in env.a.store.data.items() if k.startswith(f"tally/{sec}/")}
        t = make_terms(env, amount=2)
        lock(env, t)  # a holder debit and an escrow credit: two amount keys, one shard
        after = {k: v for k, v in env.a.store.data.items() if k.startswith(f"tally/{sec}/")}
        changed = {k for k in after if before.get(k) != after[k]}
        assert len(changed) == 1, changed


def test_a_new_security_is_counted_from_zero(env: Env) -> None:
    env.a.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    state = env.a.call("x:y", "SupplyCounting", OTHER_ISIN.isin)
    assert state == {"isin": OTHER_ISIN.isin, "done": True, "family": "", "after": ""}
    assert supply(env.a, OTHER_ISIN) == dict.fromkeys(protocol.SUPPLY_FIGURES, 0)
    step = env.a.call(env.admin, "CountSupply", OTHER_ISIN.isin, "10")
    assert step["done"] and step["counted"] == 0  # a no-op once done


# --------------------------------------------------------------------------- migration


@pytest.mark.security
def test_state_from_before_the_counters_is_refused_until_counted(env: Env) -> None:
    senders = holders(env, 9)
    for i, s in enumerate(senders[:6]):
        transfer(env, s, 1 + i % 3, ("commit", "abort", "locked")[i % 3])
    expected = truth(env.a)
    legacy(env.a)
    err = refused(env.a, "x:y", "Supply", ISIN.isin)
    assert err.name == "SupplyNotCounted"
    assert protocol.ErrorReason.parse(err.name) is protocol.ErrorReason.SUPPLY_NOT_COUNTED
    assert "not started" in err.detail
    # The flow limit sized from the supply is refused too, not sized from a wrong figure.
    err = refused(
        env.a, env.admin, "SetFlowLimit", ISIN.isin, "fabric-b", "0", "0", "60", "100", "0", "0"
    )
    assert err.name == "SupplyNotCounted"
    # Clients (relayers too) do not count; the page is bounded.
    assert refused(env.a, env.relayer, "CountSupply", ISIN.isin, "5").name == "NotAdmin"
    assert refused(env.a, env.stranger, "CountSupply", ISIN.isin, "5").name == "NotAdmin"
    for bad in ("0", str(protocol.MAX_COUNT_PAGE + 1), "-1", "x"):
        assert refused(env.a, env.admin, "CountSupply", ISIN.isin, bad).name == "InvalidArgument"
    assert env.a.call("x:y", "SupplyCounting", ISIN.isin)["done"] is False
    steps = count_all(env.a, env.admin, 4)
    assert supply(env.a) == expected == truth(env.a)
    # 10 holders (alice too) in pages of 4: 4, 4, 2, then an empty read ends the family.
    holder_steps = [s["counted"] for s in steps if s["family"] in ("holder", "escrow")][:4]
    assert holder_steps == [4, 4, 2, 0]
    assert env.a.call("x:y", "SupplyCounting", ISIN.isin)["done"] is True


def test_a_short_page_never_ends_a_family(env: Env) -> None:
    """The peer's cap (here 3) shortens every page of 1000 silently: counting goes on until
    a read after the cursor is EMPTY, and the figures are exact; the old scanning read over
    the same capped store would have been wrong."""
    senders = holders(env, 11)
    for s in senders[:5]:
        transfer(env, s, 2, "commit")
    expected = truth(env.a)
    legacy(env.a)
    env.a.store = CappedStore(env.a.store.data, cap=3)
    capped_holders = sum(
        int(json.loads(v)["balance"]) for _, v in env.a.store.scan(f"holder/{ISIN.word.hex()}/")
    )
    assert capped_holders < expected["total_supply"], "a single capped scan is short"
    steps = count_all(env.a, env.admin, protocol.MAX_COUNT_PAGE)
    assert max(s["counted"] for s in steps) == 3
    assert supply(env.a) == expected


def test_writes_while_counting_stay_exact(env: Env) -> None:
    """Between any two steps, writes before the cursor update the counters and writes after
    it are left to the scan: the result is exact whatever the interleaving."""
    rng = random.Random(14)
    senders = holders(env, 8)
    for s in senders[:3]:
        transfer(env, s, 1, "commit")
    legacy(env.a)
    env.a.store = CappedStore(env.a.store.data, cap=2)
    done = False
    rounds = 0
    while not done:
        done = env.a.call(env.admin, "CountSupply", ISIN.isin, "3")["done"]
        action = rng.choice(("issue", "new", "redeem", "commit", "abort", "locked"))
        who = rng.choice(senders)
        if action == "issue":
            env.a.call(env.admin, "Issue", ISIN.isin, who, "5")
        elif action == "new":
            senders += holders(env, 1, units=4)
        elif action == "redeem":
            env.a.call(env.admin, "Redeem", ISIN.isin, who, "1")
        else:
            transfer(env, who, 1, action)
        rounds += 1
    assert rounds > 10
    assert supply(env.a) == truth(env.a)
    transfer(env, senders[0], 1, "commit")
    assert supply(env.a) == truth(env.a)


def test_counting_steps_range_read_only_in_a_transaction_of_their_own(env: Env) -> None:
    """Leg transactions never range-read (phantom conflicts); only CountSupply does."""

    class NoScan(protocol.MemoryStore):
        def scan(self, prefix: str) -> list[tuple[str, bytes]]:
            raise AssertionError("range read")

        def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
            raise AssertionError("range read")

    store = NoScan()
    store.data = env.a.store.data
    env.a.store = store
    t = make_terms(env, amount=2)
    lock(env, t)
    prepare(env, t)
    env.a.call(env.relayer, "Commit", tj(t), cert(env, env.a, ClaimKind.COMMIT, t))
    assert supply(env.a) == truth(env.a)


def test_the_cometbft_app_pages_its_committed_state_with_the_overlay(tmp_path: Any) -> None:
    """The CometBFT app runs the same protocol: its store view pages a prefix strictly after
    the cursor, committed keys and the block's own writes merged, deletions honoured."""
    importlib.import_module("tests.unit.test_cometbft_app")  # puts kstb_cometbft on sys.path
    from kstb_cometbft.app import _Prefixed, _View
    from kstb_cometbft.store import BlockMeta, VersionedStore

    store = VersionedStore(tmp_path / "app.sqlite")
    store.commit(
        BlockMeta(1, 1, b"\0" * 32),
        {f"s/holder/x/{i:02d}": b"1" for i in range(6)} | {"s/holder/y/00": b"9"},
    )
    view = _Prefixed(_View(store, 1, {"s/holder/x/03": None, "s/holder/x/07": b"2"}), "s/")
    assert [k for k, _ in view.scan_after("holder/x/", "", 3)] == [
        "holder/x/00",
        "holder/x/01",
        "holder/x/02",
    ]
    assert [k for k, _ in view.scan_after("holder/x/", "holder/x/02", 10)] == [
        "holder/x/04",
        "holder/x/05",
        "holder/x/07",
    ]
    assert view.scan_after("holder/x/", "holder/x/07", 10) == []
    store.close()


# --------------------------------------------------------------------------- review F16/F12


def other_org_admin() -> str:
    """An admin (NodeOU) of Org2: not the issuer organisation, not an admin organisation."""
    admin = identity("Org2MSP")
    ORG_ADMINS.add(admin)
    return admin


@pytest.mark.security
def test_any_organisation_admin_counts_but_writes_nothing_else(env: Env) -> None:
    """F16: counting only counts, so the issuer cannot keep it from finishing; the other
    organisation's admin still cannot write anything but the counters and the cursor."""
    senders = holders(env, 5)
    transfer(env, senders[0], 2, "commit")
    expected = truth(env.a)
    legacy(env.a)
    outsider = other_org_admin()
    for caller in (env.relayer, env.stranger):  # clients, relayer included
        assert refused(env.a, caller, "CountSupply", ISIN.isin, "3").name == "NotAdmin"
    before = {k: v for k, v in env.a.store.data.items() if not k.startswith("tally/")}
    steps = count_all(env.a, outsider, 3)
    assert len(steps) > 3
    assert supply(env.a) == expected == truth(env.a)
    after = {k: v for k, v in env.a.store.data.items() if not k.startswith("tally/")}
    assert after == before, "a counting step writes only tally/ keys"
    h = account()
    for fn, args in (
        ("Issue", (ISIN.isin, senders[1], "5")),
        ("Redeem", (ISIN.isin, senders[1], "1")),
        ("SetEligible", (ISIN.isin, h, "true")),
        ("SetFrozen", (ISIN.isin, senders[1], "true")),
        ("SetPaused", (ISIN.isin, "true")),
        ("RegisterSecurity", (OTHER_ISIN.isin,)),
        ("RecountSupply", (ISIN.isin,)),
        ("SetRelayer", (outsider, "true")),
    ):
        assert refused(env.a, outsider, fn, *args).name == "NotAdmin", fn


@pytest.mark.security
def test_a_write_that_would_push_a_figure_past_uint256_is_refused(env: Env) -> None:
    """F12: each holder is below 2**256, and now so is every counter sum: the write that
    would overflow is refused (Overflow) and writes nothing."""
    big = 2**256 - 1
    first, second = account(), account()
    for h in (first, second):
        env.a.call(env.admin, "SetEligible", ISIN.isin, h, "true")
    err = refused(env.a, env.admin, "Issue", ISIN.isin, first, str(big))
    assert err.name == "Overflow"
    assert protocol.ErrorReason.parse(err.name) is protocol.ErrorReason.OVERFLOW
    # Up to the shard bound a holder is issued; past it, whatever the holders, refused.
    near = protocol.TALLY_SHARD_BOUND - 1 - supply(env.a)["total_supply"]
    env.a.call(env.admin, "Issue", ISIN.isin, first, str(near // 2))
    assert supply(env.a) == truth(env.a)
    shard_of = protocol._shard_of
    same = next(
        h
        for h in (account() for _ in range(10_000))
        if shard_of(f"holder/x/{h[2:]}") == shard_of(f"holder/x/{first[2:]}")
    )
    env.a.call(env.admin, "SetEligible", ISIN.isin, same, "true")
    assert refused(env.a, env.admin, "Issue", ISIN.isin, same, str(near)).name == "Overflow"
    # The bound keeps every figure, and their total, below 2**256.
    assert 3 * protocol.TALLY_SHARDS * protocol.TALLY_SHARD_BOUND <= 2**256
    assert supply(env.a) == truth(env.a)


@pytest.mark.security
def test_a_figure_past_uint256_is_never_answered(env: Env) -> None:
    """Counters written by anything else than the bounded path (a corrupted or foreign
    state) still never yield a figure no uint256 record can carry: typed Overflow."""
    sec = ISIN.word.hex()
    for shard in range(2):
        env.a.store.data[f"tally/{sec}/{shard:02x}"] = protocol.canonical_json(
            {"holders": str(2**255)}
        )
    assert refused(env.a, "x:y", "Supply", ISIN.isin).name == "Overflow"


@pytest.mark.security
def test_recount_forgets_the_counters_and_another_scheme_is_refused(env: Env) -> None:
    """F12: counters left stale (the chaincode ran a version without them for a while) are
    recounted by RecountSupply (admin organisation only) then CountSupply; counters kept by
    another counting scheme are refused until then."""
    senders = holders(env, 4)
    transfer(env, senders[0], 1, "commit")
    expected = truth(env.a)
    sec = ISIN.word.hex()
    # A downgraded chaincode's write: the balance moves, the counters do not.
    key = f"holder/{sec}/{senders[1][2:]}"
    env.a.store.data[key] = json.dumps(
        {**json.loads(env.a.store.data[key]), "balance": "1"}
    ).encode()
    assert supply(env.a) != truth(env.a)  # stale, which no code can see by itself
    assert refused(env.a, env.relayer, "RecountSupply", ISIN.isin).name == "NotAdmin"
    assert refused(env.a, other_org_admin(), "RecountSupply", ISIN.isin).name == "NotAdmin"
    env.a.call(env.admin, "RecountSupply", ISIN.isin)
    assert not any(k.startswith(f"tally/{sec}/") for k in env.a.store.data)
    assert refused(env.a, "x:y", "Supply", ISIN.isin).name == "SupplyNotCounted"
    count_all(env.a, env.admin, 2)
    assert supply(env.a) == truth(env.a) != expected
    # A state stamped by another counting scheme is not trusted.
    env.a.store.data[f"tally/{sec}/state"] = protocol.canonical_json({"done": True, "v": 2})
    err = refused(env.a, "x:y", "Supply", ISIN.isin)
    assert err.name == "SupplyNotCounted" and "RecountSupply" in err.detail


def test_the_cometbft_store_pages_without_reading_the_whole_family(tmp_path: Any) -> None:
    """F12: a CountSupply step on CometBFT reads its page from SQLite (LIMIT), not the
    whole family then a filter; deleted keys and this block's writes are honoured."""
    importlib.import_module("tests.unit.test_cometbft_app")  # puts kstb_cometbft on sys.path
    from kstb_cometbft.app import _View
    from kstb_cometbft.store import BlockMeta, VersionedStore

    store = VersionedStore(tmp_path / "app.sqlite")
    store.commit(BlockMeta(1, 1, b"\0" * 32), {f"f/{i:04d}": b"1" for i in range(2000)})
    store.commit(BlockMeta(2, 2, b"\1" * 32), {f"f/{i:04d}": None for i in range(0, 2000, 2)})
    assert [k for k, _ in store.scan_after("f/", "f/0100", 3, 2)] == [
        "f/0101",
        "f/0103",
        "f/0105",
    ]
    assert [k for k, _ in store.scan_after("f/", "f/0100", 3, 1)] == [
        "f/0101",
        "f/0102",
        "f/0103",
    ]
    calls: list[int] = []
    original = store.scan_after

    def counting(prefix: str, after: str, limit: int, height: int) -> list[tuple[str, bytes]]:
        calls.append(limit)
        return original(prefix, after, limit, height)

    store.scan_after = counting  # type: ignore[method-assign]
    store.scan = None  # type: ignore[assignment]  # a full read would fail
    # This block deletes two of the next committed keys and adds one between.
    view = _View(store, 2, {"f/0101": None, "f/0103": None, "f/0104": b"2", "f/9999": b"3"})
    assert [k for k, _ in view.scan_after("f/", "f/0100", 3)] == ["f/0104", "f/0105", "f/0107"]
    assert calls == [3 + 4]
    assert [k for k, _ in view.scan_after("f/", "f/1990", 10)] == [
        "f/1991",
        "f/1993",
        "f/1995",
        "f/1997",
        "f/1999",
        "f/9999",
    ]
    store.close()
