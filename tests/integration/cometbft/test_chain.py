"""Kind-specific behaviour of a real CometBFT chain running the KSTB application (not the
conformance suite's: transport, replay through the node, a crash and restart)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.core.reasons import ErrorReason
from bridge.devnet.cometbft import CometBridgeLedger, CometChain
from bridge.domain.committee import Committee
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.cometbft.envelope import EnvelopeCode, TxBody, sign
from bridge.ledgers.cometbft.rpc import CometClient
from tests.conformance.kind_cometbft import require_cometbft

pytestmark = [pytest.mark.integration, pytest.mark.cometbft, pytest.mark.security]
ISIN = "KR7005930003"
REPLAYS: list[bytes] = []
"""Raw transactions committed earlier in the module, replayed after the restart."""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CometChain]:
    require_cometbft()
    members = sorted(LocalKeySigner(secrets.token_bytes(32)).address for _ in range(4))
    c = CometChain("itest-cmt", tmp_path_factory.mktemp("cmt"), Committee(1, 3, tuple(members)))
    c.start()
    try:

        async def register() -> None:
            admin = _admin(c)
            try:
                await admin.call("RegisterSecurity", [ISIN])
            finally:
                await admin.close()

        asyncio.run(register())
        yield c
    finally:
        c.stop()


def _admin(chain: CometChain) -> CometClient:
    return CometClient(chain.rpc_url, chain.chain_id, LocalKeySigner(chain.admin.private_key))


async def _supply(chain: CometChain) -> dict[str, str]:
    client = CometClient(chain.rpc_url, chain.chain_id)
    try:
        value, _ = await client.query("Supply", [ISIN])
        return dict(json.loads(value))
    finally:
        await client.close()


def test_a_committed_transaction_replayed_through_the_node_is_refused(chain: CometChain) -> None:
    async def run() -> None:
        admin = _admin(chain)
        try:
            nonce = await admin.next_nonce()
            signer = LocalKeySigner(chain.admin.private_key)
            raw = sign(
                TxBody(
                    chain.chain_id,
                    "SetEligible",
                    (ISIN, "0x" + "66" * 20, "true"),
                    nonce,
                    signer.address,
                ),
                signer,
            )
            first = await admin.rpc("broadcast_tx_sync", tx="0x" + raw.hex())
            assert int(first["code"]) == 0
            assert (await admin.committed(str(first["hash"]))).code == 0
            # The node's mempool cache refuses the very same bytes at once...
            with pytest.raises(Unavailable, match="already exists in cache"):
                await admin.rpc("broadcast_tx_sync", tx="0x" + raw.hex())
        finally:
            await admin.close()
        REPLAYS.append(raw)

    asyncio.run(run())


def test_a_stranger_is_refused_by_code_and_nothing_is_issued(chain: CometChain) -> None:
    async def run() -> None:
        stranger = CometClient(
            chain.rpc_url, chain.chain_id, LocalKeySigner(secrets.token_bytes(32))
        )
        before = await _supply(chain)
        try:
            with pytest.raises(LedgerRejected) as err:
                await stranger.call("Issue", [ISIN, "0x" + "55" * 20, "1000"])
            assert err.value.reason is ErrorReason.NOT_RELAYER  # not even admitted
        finally:
            await stranger.close()
        assert await _supply(chain) == before

    asyncio.run(run())


def test_state_survives_a_crash_of_node_and_app(chain: CometChain) -> None:
    holder = "0x" + secrets.token_hex(20)

    async def issue(units: int) -> None:
        admin = _admin(chain)
        try:
            await admin.call("SetEligible", [ISIN, holder, "true"])
            await admin.call("Issue", [ISIN, holder, str(units)])
        finally:
            await admin.close()

    asyncio.run(issue(9))
    total = int(asyncio.run(_supply(chain))["total_supply"])
    assert chain.node is not None and chain.app is not None
    chain.node.kill9()
    chain.app.kill9()
    chain.start()  # same home, same ports: the app replays nothing it has, the node the rest
    assert int(asyncio.run(_supply(chain))["total_supply"]) == total

    async def replay() -> None:  # ...and after a restart (cache empty) the nonce does
        client = CometClient(chain.rpc_url, chain.chain_id)
        try:
            for raw in REPLAYS:
                again = await client.rpc("check_tx", tx="0x" + raw.hex())
                assert int(again["code"]) == EnvelopeCode.BAD_NONCE
        finally:
            await client.close()

    asyncio.run(replay())
    asyncio.run(issue(1))
    assert int(asyncio.run(_supply(chain))["total_supply"]) == total + 1


def test_workdir_holds_the_app_state(chain: CometChain) -> None:
    assert Path(chain.home, "app", "app.sqlite").exists()


def test_a_stale_nonce_is_reread_and_the_step_goes_through(chain: CometChain) -> None:
    """Two clients of one key: the second's cached nonce goes stale and is re-read."""

    async def run() -> None:
        a, b = _admin(chain), _admin(chain)
        try:
            await b.next_nonce()
            await b.call("SetEligible", [ISIN, "0x" + "77" * 20, "true"])
            await a.call("SetEligible", [ISIN, "0x" + "78" * 20, "true"])
            await b.call("SetEligible", [ISIN, "0x" + "79" * 20, "true"])  # stale: re-read
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


async def _refused_at_check_tx(client: CometClient, raw: bytes, code: EnvelopeCode) -> None:
    """Broadcast ``raw``: CometBFT v1 answers a CheckTx refusal with a JSON-RPC error or
    with the result code; either way it must be ``code`` and the node must still answer."""
    try:
        result = await client.rpc("broadcast_tx_sync", tx="0x" + raw.hex())
    except Unavailable:
        return
    assert int(result["code"]) == code


def test_deeply_nested_json_is_refused_and_the_chain_goes_on(chain: CometChain) -> None:
    """Attacker review 1: a no-key client's deeply nested JSON once raised RecursionError in
    CheckTx, which stops the CometBFT node; now it is MALFORMED and blocks go on."""

    async def run() -> None:
        client = CometClient(chain.rpc_url, chain.chain_id)
        admin = _admin(chain)
        try:
            nested = b"[" * 5000
            await _refused_at_check_tx(client, nested, EnvelopeCode.MALFORMED)
            checked = await client.rpc("check_tx", tx="0x" + nested.hex())
            assert int(checked["code"]) == EnvelopeCode.MALFORMED
            before = await client.latest_height()
            await admin.call("SetEligible", [ISIN, "0x" + "5a" * 20, "true"])
            assert await client.latest_height() > before
        finally:
            await client.close()
            await admin.close()

    asyncio.run(run())


def test_a_relayer_identity_with_a_lone_surrogate_is_refused_and_blocks_commit(
    chain: CometChain,
) -> None:
    """Attacker review 2: such an identity once became a state key that failed every
    validator's Commit (a permanent halt); now the call is InvalidArgument, nothing else."""

    async def run() -> None:
        admin = _admin(chain)
        try:
            with pytest.raises(LedgerRejected) as err:
                await admin.call("SetRelayer", ["\ud800:" + "ab" * 32, "true"])
            assert err.value.reason is ErrorReason.INVALID_ARGUMENT
            before = await admin.latest_height()
            await admin.call("SetEligible", [ISIN, "0x" + "5b" * 20, "true"])
            assert await admin.latest_height() > before
        finally:
            await admin.close()

    asyncio.run(run())


def test_a_nonce_beyond_the_window_is_refused_at_check_tx(chain: CometChain) -> None:
    """Attacker review 3: CheckTx once admitted any nonce above the next one, and such a
    transaction consumed nothing when a block carried it."""

    async def run() -> None:
        admin = _admin(chain)
        try:
            nonce = await admin.next_nonce()
            signer = LocalKeySigner(chain.admin.private_key)
            far = TxBody(chain.chain_id, "SetPaused", (ISIN, "true"), nonce + 10**6, signer.address)
            raw = sign(far, signer)
            await _refused_at_check_tx(admin, raw, EnvelopeCode.BAD_NONCE)
            checked = await admin.rpc("check_tx", tx="0x" + raw.hex())
            assert int(checked["code"]) == EnvelopeCode.BAD_NONCE
            await admin.call("SetEligible", [ISIN, "0x" + "5c" * 20, "true"])
            for _ in range(50):  # the node indexes a tx before the app commits its block
                if await admin.next_nonce() > nonce:
                    break
                await asyncio.sleep(0.1)
            assert await admin.next_nonce() == nonce + 1  # the far one never ran
        finally:
            await admin.close()

    asyncio.run(run())


def test_the_devnet_node_fault_is_an_outage_then_recovers(tmp_path: Path) -> None:
    """The DevLedger's ``node`` fault (chaos): readers get Unavailable, then the chain goes on."""
    require_cometbft()
    members = sorted(LocalKeySigner(secrets.token_bytes(32)).address for _ in range(4))
    committee = Committee(1, 3, tuple(members))
    ledger = CometBridgeLedger.start_new("fault-cmt", tmp_path, committee, [ISIN], [], 1)
    try:
        pause, resume = ledger.faults()["node"]
        client = CometClient(ledger.chain.rpc_url, ledger.chain.chain_id, timeout_s=1.0)

        async def height() -> int:
            try:
                return await client.latest_height()
            finally:
                await client.close()

        before = asyncio.run(height())
        pause()
        try:
            with pytest.raises(Unavailable):
                asyncio.run(height())
        finally:
            resume()
        ledger.set_eligible(ISIN, "0x" + "88" * 20)  # a transaction commits again
        assert asyncio.run(height()) > before
    finally:
        ledger.stop()


def test_two_validators_agree_on_every_app_hash(tmp_path: Path) -> None:
    """Two validators, each with its own application process: the same blocks give the same
    app hash on both (deterministic state), and either node answers reads."""
    require_cometbft()
    members = sorted(LocalKeySigner(secrets.token_bytes(32)).address for _ in range(4))
    chain = CometChain("pair-cmt", tmp_path, Committee(1, 3, tuple(members)), validators=2)
    chain.start()
    try:

        async def run() -> tuple[int, list[str]]:
            admin = _admin(chain)
            try:
                await admin.call("RegisterSecurity", [ISIN])
                await admin.call("SetEligible", [ISIN, "0x" + "99" * 20, "true"])
                await admin.call("Issue", [ISIN, "0x" + "99" * 20, "5"])
            finally:
                await admin.close()
            height = 0
            hashes = []
            for url in chain.rpc_urls:
                reader = CometClient(url, chain.chain_id)
                try:
                    for _ in range(100):  # this validator's app may be a block behind
                        if not height or await reader.latest_height() >= height:
                            break
                        await asyncio.sleep(0.1)
                    value, at = await reader.query("Supply", [ISIN], height)
                    assert json.loads(value)["total_supply"] == "5"
                    height = height or at
                    info = await reader.rpc("abci_info")
                    assert int(info["response"]["last_block_height"]) >= height
                    # Each node checks the proposer's header against ITS application's app
                    # hash before committing; both committed past the writes, so both
                    # applications computed the hash in this header.
                    block = await reader.rpc("block", height=str(height))
                    hashes.append(block["block"]["header"]["app_hash"])
                finally:
                    await reader.close()
            return height, hashes

        wait_for = chain.height() + 1
        _, hashes = asyncio.run(run())
        assert wait_for > 0
        assert len(set(hashes)) == 1, hashes
    finally:
        chain.stop()


@pytest.mark.batch
def test_the_supply_counters_run_on_the_app(chain: CometChain) -> None:
    """ADR 0024 on CometBFT: a security registered by this app is counted from zero (its
    supply needs no CountSupply, which is a no-op), and the figures come from counters."""

    async def run() -> None:
        admin = _admin(chain)
        reader = CometClient(chain.rpc_url, chain.chain_id)
        try:
            state, _ = await reader.query("SupplyCounting", [ISIN])
            assert json.loads(state)["done"] is True
            step = json.loads(await admin.call("CountSupply", [ISIN, "100"]))
            assert (step["done"], step["counted"]) == (True, 0)
            with pytest.raises(LedgerRejected) as err:
                await admin.call("CountSupply", [ISIN, "0"])
            assert err.value.reason is ErrorReason.INVALID_ARGUMENT
            before = int((await _supply(chain))["total_supply"])
            await admin.call("SetEligible", [ISIN, "0x" + "66" * 20, "true"])
            await admin.call("Issue", [ISIN, "0x" + "66" * 20, "12"])
            assert int((await _supply(chain))["total_supply"]) == before + 12
        finally:
            await admin.close()
            await reader.close()

    asyncio.run(run())
