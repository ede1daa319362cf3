"""Transport security to Fabric nodes on the native network: peers and the orderer require a
TLS client certificate; the bridge chaincode server accepts only the peers (TLS with client
authentication); and the start-up check confirms the chaincode is the configured ledger."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from bridge.config import Credentials, LedgerAuth, LedgerConfig, dump_toml
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import CHAINCODE_DIR
from bridge.devnet.ledger_tls import DevCA
from bridge.devnet.processes import ManagedProcess
from bridge.domain.errors import Unavailable
from bridge.domain.ids import LedgerId
from bridge.ledgers.fabric._protos import common_pb2
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.gateway import GatewayClient, build_seek_envelope
from bridge.ledgers.factory import open_reader
from bridge.ledgers.startup import LedgerMismatch, check_reached
from tests.integration.fabric.support import BridgeEnv, signing_identity

ab_pb2_grpc = importlib.import_module("bridge.ledgers.fabric.pb.orderer.ab_pb2_grpc")

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.security]

CHAINCODE = "kstbtls"
LEDGER = LedgerId("fabric-tls")
ISIN = "US0378331005"

if not (CHAINCODE_DIR / "kstb_chaincode" / "__main__.py").is_file():
    pytest.skip("contracts/fabric/kstb_chaincode is not there yet", allow_module_level=True)


def client(
    net: FabricNetwork,
    org: str = "Org1",
    user: str = "User1",
    tls: tuple[Path, Path] | str | None = "own",
) -> GatewayClient:
    """A Gateway client of ``org``'s peer as ``user``; ``tls``: ``"own"`` (the user's TLS
    client certificate), None (none) or a (cert, key) pair."""
    o = net.org(org)
    pair = (o.user_tls_cert(user), o.user_tls_key(user)) if tls == "own" else tls
    assert pair is None or isinstance(pair, tuple)
    return GatewayClient(
        o.peer_endpoint,
        o.tls_ca_cert,
        o.peer_host,
        signing_identity(net, org, user),
        net.channel,
        timeout=5.0,
        tls_client_cert=pair[0] if pair else None,
        tls_client_key=pair[1] if pair else None,
    )


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> BridgeEnv:
    return BridgeEnv.new(fabric_network, CHAINCODE, LEDGER)


def ledger_config(net: FabricNetwork, **change: object) -> LedgerConfig:
    o = net.org("Org1")
    cfg = LedgerConfig(
        id=LEDGER,
        kind="fabric",
        rpc_url=o.peer_endpoint,
        bridge=CHAINCODE,
        chain_id=0,
        finality_depth=0,
        block_interval=0.25,
        channel=net.channel,
        tls_ca=o.tls_ca_cert,
        tls_server_name=o.peer_host,
    )
    return replace(cfg, **change)  # type: ignore[arg-type]


def reader(net: FabricNetwork, cfg: LedgerConfig, org: str = "Org2") -> FabricAdapter:
    o = net.org(org)
    adapter = open_reader(
        cfg,
        Credentials(o.user_key(), o.user_cert(), o.msp_id),
        auth=LedgerAuth(tls_cert_file=o.user_tls_cert(), tls_key_file=o.user_tls_key()),
    )
    assert isinstance(adapter, FabricAdapter)
    return adapter


# -- peers: client TLS required -------------------------------------------------------------


async def test_a_peer_refuses_a_client_without_a_tls_client_certificate(
    env: BridgeEnv,
) -> None:
    bare = client(env.net, tls=None)
    try:
        with pytest.raises(Unavailable) as err:
            await bare.block_height()
    finally:
        await bare.close()
    assert "UNAVAILABLE" in str(err.value) or "handshake" in str(err.value).lower()
    # With its TLS client certificate the same identity is served.
    own = client(env.net)
    try:
        assert await own.block_height() >= 1
    finally:
        await own.close()


async def test_a_peer_refuses_a_client_certificate_from_an_unknown_ca(
    env: BridgeEnv, tmp_path: Path
) -> None:
    stranger = DevCA(tmp_path / "stranger", "not an org of the channel").ensure()
    issued = stranger.issue("intruder", client=True)
    rogue = client(env.net, tls=(issued.cert, issued.key))
    try:
        with pytest.raises(Unavailable):
            await rogue.block_height()
    finally:
        await rogue.close()


async def test_the_other_orgs_client_certificate_is_accepted(env: BridgeEnv) -> None:
    # Verifiers read through Org1's peer as Org2's User1, with Org2's TLS client certificate.
    o1, o2 = env.net.org("Org1"), env.net.org("Org2")
    cross = GatewayClient(
        o1.peer_endpoint,
        o1.tls_ca_cert,
        o1.peer_host,
        signing_identity(env.net, "Org2"),
        env.net.channel,
        tls_client_cert=o2.user_tls_cert(),
        tls_client_key=o2.user_tls_key(),
    )
    try:
        assert await cross.block_height() >= 1
    finally:
        await cross.close()


async def test_deliver_refuses_a_request_not_bound_to_the_tls_certificate(
    env: BridgeEnv,
) -> None:
    own = client(env.net)
    try:
        _, deliver = own._stubs()
        unbound = build_seek_envelope(env.net.channel, own.identity, 0, 0)  # no cert hash
        replies = [r async for r in deliver.Deliver(iter([unbound]), timeout=10)]
        statuses = [r.status for r in replies if r.WhichOneof("Type") == "status"]
        assert statuses == [common_pb2.Status.BAD_REQUEST]
        assert not [r for r in replies if r.WhichOneof("Type") == "block"]
        # The bound request (what GatewayClient sends) gets the block.
        blocks = [b async for b in own.blocks(0, 0)]
        assert len(blocks) == 1
    finally:
        await own.close()


async def test_the_orderer_refuses_a_client_without_a_tls_client_certificate(
    env: BridgeEnv,
) -> None:
    net = env.net
    root = net.orderer_tls_ca_cert.read_bytes()

    async def deliver_status(creds: grpc.ChannelCredentials) -> grpc.StatusCode | None:
        async with grpc.aio.secure_channel(
            net.orderer_endpoint,
            creds,
            [("grpc.ssl_target_name_override", "orderer.example.com")],
        ) as channel:
            stub = ab_pb2_grpc.AtomicBroadcastStub(channel)
            try:
                async for _ in stub.Deliver(iter([common_pb2.Envelope()]), timeout=5):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return None

    without = await deliver_status(grpc.ssl_channel_credentials(root_certificates=root))
    assert without is grpc.StatusCode.UNAVAILABLE
    o = net.org("Org1")
    with_cert = await deliver_status(
        grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=o.user_tls_key("Admin").read_bytes(),
            certificate_chain=o.user_tls_cert("Admin").read_bytes(),
        )
    )
    # Past the handshake: the orderer answers the (empty) request itself.
    assert with_cert is not grpc.StatusCode.UNAVAILABLE


# -- chaincode server: TLS with client authentication -----------------------------------------


def _chaincode_address(proc: ManagedProcess) -> str:
    return (proc.env or {})["CHAINCODE_SERVER_ADDRESS"]


async def _connect_status(address: str, creds: grpc.ChannelCredentials | None) -> str:
    """Open the chaincode shim stream (``protos.Chaincode/Connect``) and report how it went:
    ``"refused"`` (UNAVAILABLE: no TLS session), or ``"served"`` (a message or a wait)."""
    channel = (
        grpc.aio.secure_channel(address, creds, [("grpc.ssl_target_name_override", "127.0.0.1")])
        if creds is not None
        else grpc.aio.insecure_channel(address)
    )
    try:
        # No request iterator: grpc.aio writes an iterator's requests in a task of its own,
        # and when that write fails first (no TLS session) it cancels the call locally, so
        # the reader saw CANCELLED instead of the connection's UNAVAILABLE (flaky under load).
        # Nothing is written: a served stream waits for a request until the 3 s deadline.
        call = channel.stream_stream("/protos.Chaincode/Connect")(timeout=3)
        try:
            async for _ in call:
                return "served"
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return "refused"
            return "served"
        return "served"
    finally:
        await channel.close()


async def test_the_chaincode_server_accepts_only_the_peers(
    env: BridgeEnv, bridge_chaincode: ManagedProcess
) -> None:
    net = env.net
    address = _chaincode_address(bridge_chaincode)
    ca = net.chaincode_ca.cert_path.read_bytes()
    assert await _connect_status(address, None) == "refused", "plaintext"
    assert (
        await _connect_status(address, grpc.ssl_channel_credentials(root_certificates=ca))
        == "refused"
    ), "TLS without a client certificate"
    o = net.org("Org1")
    org_tls_client = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=o.user_tls_key().read_bytes(),
        certificate_chain=o.user_tls_cert().read_bytes(),
    )
    assert await _connect_status(address, org_tls_client) == "refused", (
        "an org's TLS client certificate is not a peer's chaincode client certificate"
    )
    peer = net.chaincode_ca.issue("peer-org1", client=True)
    as_peer = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=peer.key.read_bytes(),
        certificate_chain=peer.cert.read_bytes(),
    )
    assert await _connect_status(address, as_peer) == "served"
    # That the peers themselves reach it is checked after Init (the definition is
    # --init-required, so no query runs before it): test_start_up_check_before_and_after_init.


async def _peers_run_the_chaincode(net: FabricNetwork) -> None:
    """A query through each org's gateway runs the chaincode (over the server's TLS)."""
    for org in ("Org1", "Org2"):
        c = client(net, org)
        try:
            who = json.loads(await c.evaluate(CHAINCODE, "WhoAmI"))
            assert who["identity"] == c.identity.chaincode_identity()
        finally:
            await c.close()


def test_no_private_key_travels_in_the_chaincode_package(env: BridgeEnv) -> None:
    pkg = env.net.workdir / "chaincode" / f"{CHAINCODE}_1.0.tar.gz"
    with tarfile.open(pkg) as outer:
        code = outer.extractfile("code.tar.gz")
        assert code is not None
        with tarfile.open(fileobj=code) as inner:
            member = inner.extractfile("connection.json")
            assert member is not None
            connection = json.loads(member.read())
    assert connection["tls_required"] is True
    assert connection["client_auth_required"] is True
    assert connection["root_cert"] == env.net.chaincode_ca.cert_path.read_text()
    assert "client_key" not in connection and "client_cert" not in connection
    # Each peer's release step added its own key pair, readable by the peer's user only.
    for org in ("org1", "org2"):
        released = list(
            (env.net.workdir / org / "data").glob(
                "externalbuilder/builds/*/release/chaincode/server/connection.json"
            )
        )
        mine = [p for p in released if CHAINCODE in str(p)]
        assert mine, f"no released connection.json on {org}"
        data = json.loads(mine[0].read_text())
        issued = env.net.chaincode_ca.issue(f"peer-{org}", client=True)
        assert data["client_cert"] == issued.cert.read_text()
        assert mine[0].stat().st_mode & 0o077 == 0


# -- start-up checks ------------------------------------------------------------------------


async def test_start_up_check_before_and_after_init(env: BridgeEnv) -> None:
    net = env.net
    cfg = ledger_config(net)
    adapter = reader(net, cfg)
    try:
        with pytest.raises(LedgerMismatch, match="NotInitialized") as err:
            await check_reached(cfg, adapter)
        assert err.value.ledger == LEDGER.name
        await env.init(ISIN)
        reached = await check_reached(cfg, adapter)
        assert reached.kind == "fabric" and CHAINCODE in reached.detail
        await _peers_run_the_chaincode(net)
    finally:
        await adapter.close()


async def test_start_up_check_refuses_another_ledger_name(env: BridgeEnv) -> None:
    net = env.net
    await _initialised(env)
    cfg = ledger_config(net, id=LedgerId("fabric-other"))
    adapter = reader(net, cfg)
    try:
        with pytest.raises(LedgerMismatch) as err:
            await check_reached(cfg, adapter)
    finally:
        await adapter.close()
    assert (err.value.what, err.value.expected, err.value.found) == (
        "chaincode ledger name",
        "fabric-other",
        LEDGER.name,
    )


async def test_start_up_check_gives_up_on_a_node_not_serving_the_chaincode(
    env: BridgeEnv,
) -> None:
    # No peer serves the chaincode on the channel: the gateway cannot say it is another
    # ledger, so the check retries and then reports the node as unavailable, naming it.
    net = env.net
    cfg = ledger_config(net, bridge="nosuchchaincode")
    adapter = reader(net, cfg)
    try:
        with pytest.raises(Unavailable, match="nosuchchaincode"):
            await check_reached(cfg, adapter, reach_within=0.5)
    finally:
        await adapter.close()


async def _genesis_hash(net: FabricNetwork) -> bytes:
    c = client(net)
    try:
        return await c.genesis_hash()
    finally:
        await c.close()


async def _initialised(env: BridgeEnv) -> None:
    c = client(env.net)
    try:
        info = json.loads(await c.evaluate(CHAINCODE, "Info"))
    except Exception:
        info = {}
    finally:
        await c.close()
    if not info.get("ledger_name"):
        await env.init(ISIN)


async def test_a_fabric_relayer_pointed_at_another_ledger_refuses_to_start(
    env: BridgeEnv, tmp_path: Path
) -> None:
    await _initialised(env)
    net = env.net
    o = net.org("Org1")
    (tmp_path / "network.toml").write_text(
        dump_toml(
            {
                "committee": {
                    "epoch": 1,
                    "threshold": 3,
                    "members": ["0x" + m.hex() for m in env.committee.members],
                },
                "ledgers": [
                    {
                        "id": "fabric-other",
                        "kind": "fabric",
                        "rpc_url": o.peer_endpoint,
                        "bridge": CHAINCODE,
                        "channel": net.channel,
                        "tls_ca": str(o.tls_ca_cert),
                        "tls_server_name": o.peer_host,
                        "genesis_hash": "0x" + (await _genesis_hash(net)).hex(),
                    }
                ],
            }
        )
    )
    config = tmp_path / "relayer.toml"
    config.write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": "fabric-other",
                "listen": "127.0.0.1:0",
                "coordinator": "127.0.0.1:1",
                "key_file": str(o.user_key()),
                "cert_file": str(o.user_cert()),
                "msp_id": o.msp_id,
                "state_db": "relayer.sqlite",
                "ledger_auth": {
                    "tls_cert_file": str(o.user_tls_cert()),
                    "tls_key_file": str(o.user_tls_key()),
                },
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayers",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        # Only the ledger start-up check is under test, not the bridge's gRPC transport.
        env={
            **os.environ,
            "KSTB_LOG_FORMAT": "json",
            "KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT": "1",
        },
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    stderr = err.decode()
    assert proc.returncode == 3, stderr[-2000:]
    assert "wrong ledger, refusing to start" in stderr
    assert (
        f"chaincode ledger name mismatch: configured fabric-other, node reports {LEDGER.name}"
        in stderr
    )
