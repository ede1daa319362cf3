"""The CometBFT kind's conformance harness (a pytest plugin the suite's conftest loads).

One validator and the KSTB application as local processes (``bridge.devnet.cometbft``);
the relayer signs with a fresh key registered by the issuer's admin; the admin acts are
signed transactions of the genesis admin key. Skipped when the pinned ``cometbft`` binary is
absent outside CI (``deploy/cometbft/build.sh`` builds it; CI always does).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.config import Credentials, LedgerConfig
from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.devnet.cometbft import APP_NAME, CometChain, cometbft_binary
from bridge.domain.committee import Committee
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import LedgerId
from bridge.domain.legs import TxOutcome
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.cometbft.envelope import account_id
from bridge.ledgers.cometbft.rpc import CometClient
from bridge.ledgers.kinds import get_kind
from tests.conformance.harness import BROKER, ISIN, new_committee


@dataclass
class CometHarness:
    """The KSTB application on a one-validator CometBFT chain."""

    chain: CometChain
    relayer_key: Path
    signers: list[LocalKeySigner]
    committee: Committee
    kind: str = "cometbft"
    ledger: LedgerId = field(default_factory=lambda: LedgerId("conformance-cmt"))
    step_seconds: float = 2.0
    """A commit waits for the next block (at most a second apart; about 0.3 s with traffic)."""

    @property
    def config(self) -> LedgerConfig:
        return LedgerConfig(
            id=self.ledger,
            kind="cometbft",
            rpc_url=self.chain.rpc_url,
            bridge=APP_NAME,
            chain_id=0,
            finality_depth=0,
            block_interval=0.3,
            channel=self.chain.chain_id,
            genesis_hash=self.chain.network_word,
        )

    @property
    def bridge_word(self) -> bytes:
        return get_kind("cometbft").bridge_word(self.config)

    @property
    def network_word(self) -> bytes:
        return self.chain.network_word

    def relayer(self) -> LedgerAdapter:
        return get_kind("cometbft").open(self.config, Credentials(self.relayer_key), None, True)

    def reader(self) -> LedgerAdapter:
        return get_kind("cometbft").open(self.config, None, None, False)

    async def _admin(self, function: str, *args: str) -> str:
        signer = LocalKeySigner(self.chain.admin.private_key)
        client = CometClient(self.chain.rpc_url, self.chain.chain_id, signer)
        try:
            return await client.call(function, list(args))
        finally:
            await client.close()

    async def holder(self, units: int = 0, eligible: bool = True) -> bytes:
        address = "0x" + secrets.token_hex(20)
        if eligible:
            await self._admin("SetEligible", ISIN, address, "true")
        if units:
            await self._admin("Issue", ISIN, address, str(units))
        return bytes(12) + bytes.fromhex(address[2:])

    async def settled(self, outcome: TxOutcome) -> None:
        """One node: a committed step is visible at once."""

    async def ledger_time(self) -> int:
        """BFT time follows this machine's clock (a block behind)."""
        return int(time.time())

    async def reach_time(self, when: int) -> None:
        """A block's time is its predecessor's commit time (BFT time): wait for the wall
        clock, then one more block interval and a second's rounding."""
        await asyncio.sleep(max(0.0, when - time.time()) + self.chain.block_time + 1.0)

    async def set_eligible(self, holder: bytes, eligible: bool) -> None:
        flag = "true" if eligible else "false"
        await self._admin("SetEligible", ISIN, "0x" + holder[12:].hex(), flag)

    async def set_depository(self, key: bytes) -> None:
        await self._admin("SetDepository", "0x" + key.hex())

    async def set_flow_limit(self, counterpart: LedgerId, limit: FlowLimit) -> None:
        values = (
            limit.outbound_capacity,
            limit.inbound_capacity,
            limit.window,
            limit.share_bps,
            limit.large_threshold,
            limit.large_delay,
        )
        await self._admin("SetFlowLimit", ISIN, counterpart.name, *(str(v) for v in values))

    async def parked(self, transfer_id: bytes) -> int:
        client = CometClient(self.chain.rpc_url, self.chain.chain_id)
        try:
            value, _ = await client.query("Parked", ["0x" + transfer_id.hex()])
        finally:
            await client.close()
        return int(json.loads(value)["amount"])


def require_cometbft() -> None:
    """Skip outside CI when the pinned binary is absent; in CI it must be there."""
    if cometbft_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("cometbft is not built (deploy/cometbft/build.sh)")
        pytest.skip("cometbft is not built (run deploy/cometbft/build.sh)")


@pytest.fixture(scope="package")
def cometbft_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CometHarness]:
    require_cometbft()
    workdir = tmp_path_factory.mktemp("conformance-cometbft")
    signers, committee = new_committee()
    chain = CometChain("conformance-cmt", workdir, committee).start()
    try:
        relayer = DevAccount.generate()
        key = workdir / "relayer.key"
        write_key_file(key, relayer)
        harness = CometHarness(chain, key, signers, committee)
        identity = f"key:{account_id(LocalKeySigner(relayer.private_key).address)}"

        async def setup() -> None:
            await harness._admin("SetRelayer", identity, "true")
            await harness._admin("SetInstructor", "0x" + BROKER.address.hex(), "true")
            await harness._admin("RegisterSecurity", ISIN)

        asyncio.run(setup())
        yield harness
    finally:
        chain.stop()
