"""Connections to EVM nodes: TLS against the node's CA and a bearer token (the devnet's
authenticating proxy in front of a real anvil), and the start-up checks that a component
reached the ledger it expects (chain id, endpoint code, endpoint ledger id), down to a real
relayer process refusing to start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.config import Credentials, LedgerAuth, LedgerConfig, dump_toml
from bridge.devnet.anvil import DevAccount, write_key_file, write_token_file
from bridge.devnet.ledger_tls import DevCA
from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Action, Leg, LegState
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.evm.transport import EvmTransport, NodeConnectionRefused
from bridge.ledgers.factory import open_adapter
from bridge.ledgers.startup import LedgerMismatch, check_reached
from bridge.rpc.tls import INSECURE_ENV
from tests.integration.conftest import TwoLedgers, instruct

pytestmark = [pytest.mark.integration, pytest.mark.security]


class Secured:
    """``two_ledgers``'s anvil behind the authenticating TLS proxy."""

    def __init__(self, env: TwoLedgers, workdir: Path) -> None:
        self.env = env
        self.ca = DevCA(workdir / "evm-ca", "test EVM node CA").ensure()
        self.token_file = write_token_file(workdir / "keys" / "rpc-token")
        env.node.secure(self.ca, self.token_file)
        self.workdir = workdir

    def config(self, which: str = "a") -> LedgerConfig:
        """Ledger ``which`` reached through the proxy, verified against the test CA."""
        ledger = self.env.a if which == "a" else self.env.b
        return replace(
            ledger.config(), rpc_url=self.env.node.public_rpc_url, tls_ca=self.ca.cert_path
        )

    @property
    def auth(self) -> LedgerAuth:
        return LedgerAuth(token_file=self.token_file)

    def adapter(self, which: str = "a", key: bytes | None = None, **kw: object) -> EvmAdapter:
        cfg = self.config(which)
        transport = kw.pop("transport", None) or EvmTransport.for_ledger(cfg, self.auth)
        assert not kw
        assert isinstance(transport, EvmTransport)
        return EvmAdapter(cfg, key, transport=transport)


@pytest.fixture(scope="module")
def secured(two_ledgers: TwoLedgers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    s = Secured(two_ledgers, tmp_path_factory.mktemp("secured"))
    try:
        yield s
    finally:
        assert two_ledgers.node.proxy is not None
        two_ledgers.node.proxy.stop()
        two_ledgers.node.proxy = None


def proxy_log(secured: Secured) -> str:
    proxy = secured.env.node.proxy
    assert proxy is not None and proxy.process is not None
    return proxy.process.log_path.read_text()


# -- with the CA and the token, the adapter works -------------------------------------------


async def test_with_ca_and_token_the_adapter_reads_and_writes(secured: Secured) -> None:
    env = secured.env
    a = secured.adapter("a", env.a.relayer.private_key)
    try:
        alice, bob = env.a.holder(50), env.b.holder()
        t = env.terms(alice, bob, 20)
        await a.submit(Action.LOCK, t, None, instruct(t))
        assert (await a.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
        assert env.a.balance(alice.address) == 30
        reached = await check_reached(secured.config("a"), a)
        assert reached.kind == "evm" and str(env.node.chain_id) in reached.detail
    finally:
        await a.close()


async def test_every_request_goes_over_the_adapters_one_session(secured: Secured) -> None:
    """SessionProvider: the adapter's session (the CA, the token) carries every request,
    web3's own session cache is never filled, and a closed adapter reopens on next use."""
    a = secured.adapter("a")
    try:
        heights = await asyncio.gather(*(a.finalized_height() for _ in range(20)))
        assert min(heights) >= 0
        session = a._session
        assert session is not None and not session.closed
        assert len(a._provider._request_session_manager.session_cache) == 0
        # A batch request too: web3's own session (no CA, no token) would be refused here.
        async with a._w3.batch_requests() as batch:
            batch.add(a._w3.eth.get_block_number())
            (number,) = await batch.async_execute()
        assert int(number) >= max(heights)
        assert a._session is session
        await a.close()
        assert session.closed and a._session is None
        assert await a.finalized_height() >= max(heights)
        assert a._session is not None and a._session is not session
    finally:
        await a.close()


def test_the_factory_builds_the_same_authenticated_adapter(secured: Secured) -> None:
    cfg = secured.config("a")
    key_file = secured.workdir / "keys" / "relayer-a.key"
    write_key_file(key_file, secured.env.a.relayer)
    adapter = open_adapter(cfg, Credentials(key_file), auth=secured.auth)
    assert isinstance(adapter, EvmAdapter)
    assert adapter.operator == secured.env.a.relayer.address


# -- without the token, or with a wrong one: refused, nothing applied -------------------------


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no-token", "wrong-token"])
async def test_a_request_without_the_right_token_is_refused_and_nothing_applied(
    secured: Secured, token: str | None
) -> None:
    env = secured.env
    alice, bob = env.a.holder(50), env.b.holder()
    t = env.terms(alice, bob, 20)
    transport = EvmTransport(tls_ca=secured.ca.cert_path, token=token)
    rogue = secured.adapter("a", env.a.relayer.private_key, transport=transport)
    try:
        with pytest.raises(Unavailable, match="401"):
            await rogue.finalized_height()
        with pytest.raises(Unavailable, match="401"):
            await rogue.submit(Action.LOCK, t, None, instruct(t))
    finally:
        await rogue.close()
    assert env.a.balance(alice.address) == 50, "nothing was escrowed"
    honest = secured.adapter("a")
    try:
        assert (await honest.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    finally:
        await honest.close()
    assert "unauthenticated request refused" in proxy_log(secured)
    assert secured.token_file.read_text().strip() not in proxy_log(secured)


# -- a node not signed by the configured CA, or plaintext: refused ------------------------------


async def test_a_node_certificate_from_another_ca_is_refused(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = DevCA(secured.workdir / "other-ca", "someone else").ensure()
    cfg = replace(secured.config("a"), tls_ca=other.cert_path)
    adapter = EvmAdapter(cfg, None, transport=EvmTransport.for_ledger(cfg, secured.auth))
    try:
        with pytest.raises(Unavailable, match=r"(?i)certificate verify failed"):
            await adapter.finalized_height()
    finally:
        await adapter.close()
    # Without tls_ca the token is never sent, development flag or not: the system trust
    # store would be all that verifies the node.
    system = replace(secured.config("a"), tls_ca=None)
    with pytest.raises(NodeConnectionRefused, match="a token needs tls_ca"):
        EvmTransport.for_ledger(system, secured.auth)
    # Under the development flag a connection verified by the system store is possible
    # (without a token); the store does not know the devnet CA.
    adapter = EvmAdapter(system, None)
    try:
        with pytest.raises(Unavailable, match=r"(?i)certificate verify failed"):
            await adapter.finalized_height()
    finally:
        await adapter.close()
    # Without the flag it is refused before anything is sent.
    monkeypatch.delenv(INSECURE_ENV)
    with pytest.raises(NodeConnectionRefused, match="needs tls_ca"):
        EvmAdapter(system, None)
    with pytest.raises(NodeConnectionRefused, match=r"needs an https:// rpc_url"):
        EvmAdapter(secured.env.a.config(), None)  # anvil's plain http port


async def test_the_proxy_speaks_tls_only(secured: Secured) -> None:
    assert secured.env.node.proxy is not None
    plain = replace(
        secured.config("a"), rpc_url=f"http://127.0.0.1:{secured.env.node.proxy.port}", tls_ca=None
    )
    adapter = EvmAdapter(plain, None)
    try:
        with pytest.raises(Unavailable):
            await adapter.finalized_height()
    finally:
        await adapter.close()


def test_a_token_is_never_sent_over_plain_http(secured: Secured) -> None:
    plain = replace(secured.config("a"), rpc_url=secured.env.node.rpc_url, tls_ca=None)
    with pytest.raises(InvalidInput, match="token needs an https:// rpc_url"):
        EvmTransport.for_ledger(plain, secured.auth)


def test_a_token_file_readable_by_others_is_refused(secured: Secured) -> None:
    loose = secured.workdir / "keys" / "loose-token"
    loose.write_text(secured.token_file.read_text())
    os.chmod(loose, 0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        EvmTransport.for_ledger(secured.config("a"), LedgerAuth(token_file=loose))


# -- start-up checks -----------------------------------------------------------------------


async def test_wrong_chain_id_is_a_mismatch_naming_both_values(secured: Secured) -> None:
    cfg = replace(secured.config("a"), chain_id=secured.env.node.chain_id + 1)
    adapter = EvmAdapter(cfg, None, transport=EvmTransport.for_ledger(cfg, secured.auth))
    try:
        with pytest.raises(LedgerMismatch) as err:
            await check_reached(cfg, adapter)
    finally:
        await adapter.close()
    assert (err.value.what, err.value.expected, err.value.found) == (
        "chain id",
        str(secured.env.node.chain_id + 1),
        str(secured.env.node.chain_id),
    )
    assert err.value.ledger == secured.env.a.name


async def test_an_address_without_code_is_a_mismatch(secured: Secured) -> None:
    cfg = replace(secured.config("a"), bridge=secured.env.a.relayer.address)
    adapter = EvmAdapter(cfg, None, transport=EvmTransport.for_ledger(cfg, secured.auth))
    try:
        with pytest.raises(LedgerMismatch, match="endpoint contract code") as err:
            await check_reached(cfg, adapter)
    finally:
        await adapter.close()
    assert err.value.found == "no code"


async def test_an_endpoint_of_another_ledger_is_a_mismatch(secured: Secured) -> None:
    # Ledger A's configuration pointing at ledger B's endpoint (same chain, same code).
    cfg = replace(secured.config("a"), bridge=secured.env.b.endpoint.address)
    adapter = EvmAdapter(cfg, None, transport=EvmTransport.for_ledger(cfg, secured.auth))
    try:
        with pytest.raises(LedgerMismatch) as err:
            await check_reached(cfg, adapter)
    finally:
        await adapter.close()
    assert err.value.what == "endpoint ledger id"
    assert err.value.expected == "0x" + LedgerId(secured.env.a.name).word.hex()
    assert err.value.found == "0x" + LedgerId(secured.env.b.name).word.hex()


# These daemons are started only to see their ledger start-up check; the bridge's own gRPC
# transport (mTLS, tests/e2e/test_security_transport.py) is not under test here.
PLAIN_GRPC_ENV = {
    **os.environ,
    "KSTB_LOG_FORMAT": "json",
    "KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT": "1",
    "KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT": "1",  # the devnet relayer's key file
}


def _relayer_files(secured: Secured, workdir: Path, **ledger: object) -> Path:
    env = secured.env
    workdir.mkdir(parents=True, exist_ok=True)
    entry = {
        "id": env.a.name,
        "kind": "evm",
        "rpc_url": env.node.public_rpc_url,
        "bridge": env.a.endpoint.address,
        "chain_id": env.node.chain_id,
        "finality_depth": 0,
        "tls_ca": str(secured.ca.cert_path),
        "block_interval": 0.2,
    }
    entry.update(ledger)
    (workdir / "network.toml").write_text(
        dump_toml(
            {
                "committee": {
                    "epoch": 1,
                    "threshold": 3,
                    "members": ["0x" + m.hex() for m in env.committee.members],
                },
                "ledgers": [entry],
            }
        )
    )
    write_key_file(workdir / "relayer.key", env.a.relayer)
    path = workdir / "relayer.toml"
    path.write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": env.a.name,
                "listen": "127.0.0.1:0",
                "coordinator": "127.0.0.1:1",
                "key_file": "relayer.key",
                "state_db": "relayer.sqlite",
                "ledger_auth": {"token_file": str(secured.token_file)},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"chain_id": 99_999}, "chain id mismatch: configured 99999, node reports"),
        ({"id": "brokerage-z"}, "endpoint ledger id mismatch"),
    ],
    ids=["wrong-chain-id", "wrong-ledger"],
)
def test_a_relayer_pointed_at_the_wrong_ledger_refuses_to_start(
    secured: Secured, tmp_path: Path, change: dict[str, object], what: str
) -> None:
    config = _relayer_files(secured, tmp_path, **change)
    if "id" in change:  # the relayer file names the ledger it serves
        text = config.read_text().replace(f'"{secured.env.a.name}"', f'"{change["id"]}"')
        config.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "relayers", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=PLAIN_GRPC_ENV,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "wrong ledger, refusing to start" in proc.stderr
    assert what in proc.stderr
    assert "relayer started" not in proc.stderr


def test_a_relayer_pointed_at_the_right_ledger_gets_past_the_check(
    secured: Secured, tmp_path: Path
) -> None:
    config = _relayer_files(secured, tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "relayers", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=PLAIN_GRPC_ENV,
    ) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "ledger reached" in line or "Traceback" in line:
                    break
            assert "ledger reached" in line, line
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_verifier_reading_the_wrong_chain_refuses_to_start(
    secured: Secured, tmp_path: Path
) -> None:
    _relayer_files(secured, tmp_path, chain_id=99_998)
    member = DevAccount.generate()
    write_key_file(tmp_path / "member.key", member)
    config = tmp_path / "verifier.toml"
    config.write_text(
        dump_toml(
            {
                "network": "network.toml",
                "listen": "127.0.0.1:0",
                "key_file": "member.key",
                "vote_db": "votes.sqlite",
                "ledger_auth": {secured.env.a.name: {"token_file": str(secured.token_file)}},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "verifiers", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=PLAIN_GRPC_ENV,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "chain id mismatch: configured 99998" in proc.stderr
    assert "verifier started" not in proc.stderr
