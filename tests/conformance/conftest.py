"""One harness per ledger kind, each started once per session (ADR 0014).

Adapters are opened through the ledger-kind registry (``get_kind(kind).open``), as the
daemons open them. The ``harness`` fixture is parametrised by kind; the Fabric case carries
the ``fabric`` marker (``-m "conformance and not fabric"`` runs the EVM case alone).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from bridge.config import Credentials, LedgerAuth, LedgerConfig
from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode, DevAccount, write_key_file
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.geth import GethNetwork
from bridge.domain.committee import Committee
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import TxOutcome
from bridge.domain.signer import LocalKeySigner
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.evm import deploy
from bridge.ledgers.fabric.gateway import GatewayClient
from bridge.ledgers.kinds import get_kind
from bridge.rpc.tls import INSECURE_ENV
from tests.conformance.harness import BROKER, ISIN, KindHarness, new_committee

KINDS = [
    pytest.param("evm", id="evm"),
    pytest.param("fabric", id="fabric", marks=pytest.mark.fabric),
    # ---- EVM profiles and clients (ADR 0019)
    pytest.param("kaia", id="kaia", marks=pytest.mark.kaia),
    pytest.param("geth", id="geth", marks=pytest.mark.geth),
]

# A kind's harness can live in its own module ``kind_<kind>.py`` here, defining the fixture
# ``<kind>_harness``; it joins the suite marked with its kind, no edit to this file. (Its
# fixture is bound into this conftest: ``pytest_plugins`` is only allowed at the top level.)
_PLUGINS = sorted(p.stem for p in Path(__file__).parent.glob("kind_*.py"))
for _name in _PLUGINS:
    _fixture = f"{_name[5:]}_harness"
    globals()[_fixture] = getattr(importlib.import_module(f"tests.conformance.{_name}"), _fixture)
KINDS += [
    pytest.param(name[5:], id=name[5:], marks=getattr(pytest.mark, name[5:])) for name in _PLUGINS
]


@pytest.fixture(scope="package", autouse=True)
def _development_flags() -> Iterator[None]:
    """Plain anvil http and the devnet's plaintext key files: development only, and only
    while this package's tests run (package scope: restored before the next package, whose
    tests must see the flags unset)."""
    saved = {k: os.environ.get(k) for k in (INSECURE_ENV, PLAINTEXT_KEYS_ENV)}
    os.environ[INSECURE_ENV] = "1"
    os.environ[PLAINTEXT_KEYS_ENV] = "1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- EVM (anvil) ---------------------------------------------------------------------------
@dataclass
class EvmHarness:
    """An endpoint and token on a fresh anvil mining one block per transaction."""

    node: AnvilNode
    admin: DevAccount
    relayer_key: Path
    endpoint: Contract
    token: Contract
    signers: list[LocalKeySigner]
    committee: Committee
    kind: str = "evm"
    ledger: LedgerId = field(default_factory=lambda: LedgerId("conformance-evm"))
    profile: str = "ethereum"
    finality_depth: int = 0
    step_seconds: float = 2.0
    """One block per transaction: a step is mined and visible on return (tenths of a second;
    1 s was too little for the rotation's refusals and install under a load of 20 on 2 cores)."""

    @property
    def config(self) -> LedgerConfig:
        """Parsed and checked by the EVM kind, as a network file's entry would be."""
        kind = get_kind("evm")
        table = kind.table.model_validate(
            {
                "id": self.ledger.name,
                "kind": "evm",
                "rpc_url": self.node.rpc_url,
                "bridge": self.endpoint.address,
                "chain_id": self.node.chain_id,
                "finality_depth": self.finality_depth,
                "block_interval": 0.2,
                "profile": self.profile,
            }
        )
        return kind.ledger_config(table, Path("."))

    @property
    def bridge_word(self) -> bytes:
        return get_kind("evm").bridge_word(self.config)

    @property
    def network_word(self) -> bytes:
        return evm_network_word(self.node.chain_id)

    def relayer(self) -> LedgerAdapter:
        return get_kind("evm").open(self.config, Credentials(self.relayer_key), None, True)

    def reader(self) -> LedgerAdapter:
        return get_kind("evm").open(self.config, None, None, False)

    async def holder(self, units: int = 0, eligible: bool = True) -> bytes:
        acct = DevAccount.generate()
        w3 = deploy.connect(self.node.rpc_url)
        if eligible:
            deploy.set_eligible(w3, self.admin.private_key, self.token, acct.address, True)
        if units:
            deploy.issue(w3, self.admin.private_key, self.token, acct.address, units)
        return bytes(12) + bytes.fromhex(acct.address[2:])

    async def settled(self, outcome: TxOutcome) -> None:
        """One node: a mined step is visible at once."""

    async def ledger_time(self) -> int:
        """The latest block's timestamp."""
        return int(self._w3.eth.get_block("latest")["timestamp"])

    async def reach_time(self, when: int) -> None:
        """Anvil's calls and estimates see the latest block's time: wait for the wall clock,
        then mine an empty block (stamped with it)."""
        await asyncio.sleep(max(0.0, when - time.time()))
        while True:
            latest = self._w3.eth.get_block("latest")
            if int(latest["timestamp"]) >= when:
                return
            # Empty blocks would lower the EIP-1559 base fee; a node held at a fixed one (the
            # Kaia profile's) must see the same fee after this wait as before it.
            fee = latest.get("baseFeePerGas")
            if fee is not None:
                await asyncio.to_thread(
                    self.node.rpc, "anvil_setNextBlockBaseFeePerGas", [hex(int(fee))]
                )
            await asyncio.to_thread(self.node.rpc, "evm_mine", [])

    @property
    def _w3(self) -> Web3:
        return deploy.connect(self.node.rpc_url)

    @property
    def _endpoint(self) -> Contract:
        return self.endpoint

    async def set_eligible(self, holder: bytes, eligible: bool) -> None:
        address = Web3.to_checksum_address(holder[12:])
        deploy.set_eligible(self._w3, self.admin.private_key, self.token, address, eligible)

    async def set_depository(self, key: bytes) -> None:
        address = Web3.to_checksum_address(key)
        deploy.set_depository(self._w3, self.admin.private_key, self._endpoint, address)

    async def set_flow_limit(self, counterpart: LedgerId, limit: FlowLimit) -> None:
        deploy.set_flow_limit(
            self._w3, self.admin.private_key, self._endpoint, SecurityId(ISIN), counterpart, limit
        )

    async def parked(self, transfer_id: bytes) -> int:
        return int(self._endpoint.functions.parked(transfer_id).call())


def evm_endpoint(node: AnvilNode, ledger: LedgerId, workdir: Path) -> EvmHarness:
    """Deploy the endpoint and token on a started ``node`` (funded by ``node.fund``)."""
    signers, committee = new_committee()
    w3 = deploy.connect(node.rpc_url)
    admin, relayer = DevAccount.generate(), DevAccount.generate()
    node.fund(admin.address)
    node.fund(relayer.address)
    endpoint = deploy.deploy_endpoint(w3, admin.private_key, ledger, committee)
    deploy.set_relayer(w3, admin.private_key, endpoint, relayer.address, True)
    broker = Web3.to_checksum_address(BROKER.address)
    deploy.set_instructor(w3, admin.private_key, endpoint, broker, True)
    token = deploy.deploy_security_token(w3, admin.private_key, SecurityId(ISIN))
    deploy.register_security(w3, admin.private_key, endpoint, token)
    key = workdir / "relayer.key"
    write_key_file(key, relayer)
    return EvmHarness(node, admin, key, endpoint, token, signers, committee, ledger=ledger)


@pytest.fixture(scope="package")
def evm_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvmHarness]:
    workdir = tmp_path_factory.mktemp("conformance-evm")
    node = AnvilNode("conformance", 31337, 0, workdir).start()
    try:
        yield evm_endpoint(node, LedgerId("conformance-evm"), workdir)
    finally:
        node.stop()


# ---- Kaia profile (ADR 0019): an anvil node configured like Kairos ------------------------
@pytest.fixture(scope="package")
def kaia_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvmHarness]:
    """The EVM endpoint on a Kaia-like node, opened with ``profile = "kaia"``."""
    from bridge.devnet.kaia import KaiaLikeNode

    workdir = tmp_path_factory.mktemp("conformance-kaia")
    kaia = KaiaLikeNode("conformance-kaia", workdir).start()
    try:
        h = evm_endpoint(kaia.node, LedgerId("conformance-kaia"), workdir)
        h.profile = "kaia"
        yield h
    finally:
        kaia.stop()


# -- Fabric (native network, bridge chaincode) -----------------------------------------------
@dataclass
class FabricHarness:
    """The bridge chaincode on the session's Fabric network; the relayer is Org2's User1
    through Org2's peer, the admin Org1's Admin (so every step crosses both peers)."""

    net: FabricNetwork
    chaincode: str
    genesis: bytes
    signers: list[LocalKeySigner]
    committee: Committee
    kind: str = "fabric"
    ledger: LedgerId = field(default_factory=lambda: LedgerId("conformance-fab"))
    step_seconds: float = 1.5
    """Endorsement, ordering and both peers' commit (about half a second here)."""

    def config(self, org: str) -> LedgerConfig:
        o = self.net.org(org)
        return LedgerConfig(
            id=self.ledger,
            kind="fabric",
            rpc_url=o.peer_endpoint,
            bridge=self.chaincode,
            chain_id=0,
            finality_depth=0,
            block_interval=0.2,
            channel=self.net.channel,
            tls_ca=o.tls_ca_cert,
            tls_server_name=o.peer_host,
            genesis_hash=self.genesis,
        )

    def _open(self, org: str, writable: bool) -> LedgerAdapter:
        o = self.net.org(org)
        creds = Credentials(o.user_key("User1"), o.user_cert("User1"), o.msp_id)
        auth = LedgerAuth(
            tls_cert_file=o.user_tls_cert("User1"), tls_key_file=o.user_tls_key("User1")
        )
        return get_kind("fabric").open(self.config(org), creds, auth, writable)

    @property
    def bridge_word(self) -> bytes:
        return get_kind("fabric").bridge_word(self.config("Org2"))

    @property
    def network_word(self) -> bytes:
        return self.genesis

    def relayer(self) -> LedgerAdapter:
        return self._open("Org2", True)

    def reader(self) -> LedgerAdapter:
        return self._open("Org1", False)

    async def holder(self, units: int = 0, eligible: bool = True) -> bytes:
        address = "0x" + secrets.token_hex(20)
        if eligible:
            await self._admin_call("SetEligible", ISIN, address, "true")
        if units:
            await self._admin_call("Issue", ISIN, address, str(units))
        return bytes(12) + bytes.fromhex(address[2:])

    def _admin(self) -> GatewayClient:
        from tests.integration.fabric.support import gateway_client

        return gateway_client(self.net, "Org1", "Admin")

    async def ledger_time(self) -> int:
        """The chaincode's clock is the transaction timestamp: this machine's clock."""
        return int(time.time())

    async def reach_time(self, when: int) -> None:
        """The chaincode's clock is the transaction timestamp: this machine's clock."""
        await asyncio.sleep(max(0.0, when - time.time()))

    async def settled(self, outcome: TxOutcome) -> None:
        """Both organisations' peers committed the step's block."""
        from bridge.devnet.fabric_bridge import wait_for_peers

        if outcome.height:
            await wait_for_peers(self.net, outcome.height)

    async def _admin_call(self, fn: str, *args: str) -> None:
        from tests.integration.fabric.support import submit_and_wait

        admin = self._admin()
        try:
            await submit_and_wait(self.net, admin, self.chaincode, fn, *args)
        finally:
            await admin.close()

    async def set_eligible(self, holder: bytes, eligible: bool) -> None:
        flag = "true" if eligible else "false"
        await self._admin_call("SetEligible", ISIN, "0x" + holder[12:].hex(), flag)

    async def set_depository(self, key: bytes) -> None:
        await self._admin_call("SetDepository", "0x" + key.hex())

    async def set_flow_limit(self, counterpart: LedgerId, limit: FlowLimit) -> None:
        await self._admin_call(
            "SetFlowLimit",
            ISIN,
            counterpart.name,
            *(
                str(v)
                for v in (
                    limit.outbound_capacity,
                    limit.inbound_capacity,
                    limit.window,
                    limit.share_bps,
                    limit.large_threshold,
                    limit.large_delay,
                )
            ),
        )

    async def parked(self, transfer_id: bytes) -> int:
        import json

        admin = self._admin()
        try:
            raw = await admin.evaluate(self.chaincode, "Parked", ["0x" + transfer_id.hex()])
        finally:
            await admin.close()
        return int(json.loads(raw)["amount"])


@pytest.fixture(scope="package")
def fabric_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricHarness]:
    import asyncio

    from bridge.devnet.fabric_bridge import start_bridge_chaincode
    from tests.integration.fabric.support import (
        gateway_client,
        initialise,
        signing_identity,
        submit_and_wait,
    )

    net = FabricNetwork(tmp_path_factory.mktemp("conformance-fabric")).start()
    chaincode = "kstbconf"
    proc = None
    try:
        proc = start_bridge_chaincode(net, chaincode)
        signers, committee = new_committee()
        ledger = LedgerId("conformance-fab")

        async def setup() -> bytes:
            admin = gateway_client(net, "Org1", "Admin")
            try:
                await initialise(net, admin, chaincode, ledger, committee)
                relayer = signing_identity(net, "Org2").chaincode_identity()
                await submit_and_wait(net, admin, chaincode, "SetRelayer", relayer, "true")
                await submit_and_wait(net, admin, chaincode, "RegisterSecurity", ISIN)
                return await admin.genesis_hash()
            finally:
                await admin.close()

        genesis = asyncio.run(setup())
        yield FabricHarness(net, chaincode, genesis, signers, committee)
    finally:
        if proc is not None:
            proc.stop()
        net.stop()


@pytest.fixture(scope="package", params=KINDS)
def harness(request: pytest.FixtureRequest) -> KindHarness:
    """The endpoint of each ledger kind in turn (the Fabric one marked ``fabric``)."""
    harness: KindHarness = request.getfixturevalue(f"{request.param}_harness")
    return harness


# ---- go-ethereum network (ADR 0019): deploy through node 0, relayer on node 1, reads node 2
@dataclass
class GethHarness(EvmHarness):
    """The EVM endpoint on a three-node geth network with finality depth 2: the relayer
    sends through node 1 and the reader reads through node 2; every admin act and step
    returns once final on every node."""

    net: GethNetwork | None = None

    def _on(self, url: str) -> LedgerConfig:
        return replace(self.config, rpc_url=url)

    def relayer(self) -> LedgerAdapter:
        assert self.net is not None
        config = self._on(self.net.relayer_url)
        return get_kind("evm").open(config, Credentials(self.relayer_key), None, True)

    def reader(self) -> LedgerAdapter:
        assert self.net is not None
        return get_kind("evm").open(self._on(self.net.reader_urls[0]), None, None, False)

    def _final(self) -> None:
        assert self.net is not None
        self.net.wait_final_everywhere(self.net.height(0))

    async def reach_time(self, when: int) -> None:
        """The relayer's node has a block stamped ``when`` or later (the authority seals one
        every second)."""
        assert self.net is not None
        w3 = deploy.connect(self.net.relayer_url)
        for _ in range(int(max(0, when - time.time())) * 4 + 40):
            if int(w3.eth.get_block("latest")["timestamp"]) >= when:
                return
            await asyncio.sleep(0.25)
        raise TimeoutError(f"no block stamped {when} or later on the relayer's node")

    async def settled(self, outcome: TxOutcome) -> None:
        """The step's block is final on every node."""
        assert self.net is not None
        if outcome.height:
            await asyncio.to_thread(self.net.wait_final_everywhere, outcome.height)

    async def holder(self, units: int = 0, eligible: bool = True) -> bytes:
        word = await super().holder(units, eligible)
        await asyncio.to_thread(self._final)
        return word

    async def set_eligible(self, holder: bytes, eligible: bool) -> None:
        await super().set_eligible(holder, eligible)
        await asyncio.to_thread(self._final)

    async def set_depository(self, key: bytes) -> None:
        await super().set_depository(key)
        await asyncio.to_thread(self._final)

    async def set_flow_limit(self, counterpart: LedgerId, limit: FlowLimit) -> None:
        await super().set_flow_limit(counterpart, limit)
        await asyncio.to_thread(self._final)


@pytest.fixture(scope="package")
def geth_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GethHarness]:
    from bridge.devnet.geth import GethNetwork, geth_binary

    try:
        geth_binary()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    workdir = tmp_path_factory.mktemp("conformance-geth")
    # 40 M gas a block: neither genesis's default nor geth's own (so a test sees it is set).
    net = GethNetwork(
        "conformance", 1337, workdir, size=3, finality_depth=2, gas_limit=40_000_000
    ).start()
    try:
        base = evm_endpoint(net, LedgerId("conformance-geth"), workdir)  # type: ignore[arg-type]
        h = GethHarness(**{f.name: getattr(base, f.name) for f in fields(base)}, net=net)
        h.finality_depth = net.finality_depth
        # A block a second, and a step is final two blocks deep on every node (about 2.5 s).
        h.step_seconds = 4.0
        h._final()
        yield h
    finally:
        net.stop()
