"""The EVM bridge endpoint as the devnet administers it, whatever node runs it (ADR 0019).

:class:`EvmEndpointLedger` is the admin and holder half of an EVM
:class:`~bridge.devnet.ledger.DevLedger` (anvil's ``LedgerHandle``, the geth network's
``GethLedger``); :func:`deploy_evm_endpoint` deploys and configures the endpoint and tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from web3 import Web3
from web3.contract import Contract

from bridge.devnet.anvil import DevAccount
from bridge.domain.committee import Committee
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import LedgerId, SecurityId
from bridge.ledgers.evm import deploy

if TYPE_CHECKING:
    from bridge.devnet.starters import StartContext


def deploy_evm_endpoint(
    w3: Web3,
    admin: DevAccount,
    relayer_address: str,
    ledger: LedgerId,
    committee: Committee,
    instructor: str,
    isins: Sequence[str],
) -> tuple[Contract, dict[str, Contract]]:
    """Deploy the endpoint (admin ``admin``, ``committee``), grant the relayer role, register
    the brokerage ``instructor`` and deploy and register a token per ISIN."""
    endpoint = deploy.deploy_endpoint(w3, admin.private_key, ledger, committee)
    deploy.set_relayer(w3, admin.private_key, endpoint, relayer_address, True)
    # SECURITY: the endpoint accepts relayer locks only for the brokerage instruction
    # key(s) the network file lists for this ledger (`[instruction_keys]`).
    deploy.set_instructor(w3, admin.private_key, endpoint, instructor, True)
    tokens = {}
    for isin in isins:
        token = deploy.deploy_security_token(w3, admin.private_key, SecurityId(isin))
        deploy.register_security(w3, admin.private_key, endpoint, token)
        tokens[isin] = token
    return endpoint, tokens


@dataclass(frozen=True)
class DeployedEndpoint:
    """A fresh EVM ledger's bridge accounts and contracts (:func:`fund_and_deploy`)."""

    admin: DevAccount
    relayer: DevAccount
    endpoint: Contract
    tokens: dict[str, Contract]
    lens: str = ""
    """The read lens's address (``BridgeLens``, issue 14 item 4)."""


def fund_and_deploy(
    ctx: StartContext,
    name: str,
    committee: Committee,
    rpc_url: str,
    fund: Callable[[str], None],
) -> DeployedEndpoint:
    """Fresh admin and relayer accounts for ledger ``name``, both funded with ``fund``, and
    the endpoint deployed through ``rpc_url`` (:func:`deploy_evm_endpoint`, with the ledger's
    brokerage instruction key and ``ctx``'s securities), and the read lens next to it
    (:func:`deploy_lens_for`)."""
    admin, relayer = DevAccount.generate(), DevAccount.generate()
    relayer_address = ctx._relayer_address(name, relayer)
    fund(admin.address)
    fund(relayer_address)
    endpoint, tokens = deploy_evm_endpoint(
        deploy.connect(rpc_url),
        admin,
        relayer_address,
        LedgerId(name),
        committee,
        ctx.instruction_key(name).address,
        ctx.isins,
    )
    lens = deploy_lens_for(rpc_url, admin)
    return DeployedEndpoint(admin, relayer, endpoint, tokens, lens)


# ---- read lens (issue 14 item 4)
def deploy_lens_for(rpc_url: str, deployer: DevAccount) -> str:
    """Deploy a ``BridgeLens`` through ``rpc_url`` (the devnet's step after the endpoint's
    deploy; the endpoint itself is untouched) and return its address for the ledger entry's
    ``lens`` key."""
    return str(deploy.deploy_lens(deploy.connect(rpc_url), deployer.private_key).address)


PUSHED_HEADS_ENV = "KSTB_DEVNET_EVM_WS"
"""``0`` leaves ``ws_url`` out of every devnet EVM ledger's entry (polling only;
bench/README.md compares both)."""


def pushed_heads() -> bool:
    """Whether devnet EVM ledger entries carry a ``ws_url`` (the default)."""
    return os.environ.get(PUSHED_HEADS_ENV, "1") != "0"


@dataclass(kw_only=True)
class EvmEndpointLedger:
    """An EVM endpoint and its tokens, administered through :attr:`admin_rpc_url`.

    Guarantees: every admin act returns once :meth:`settle` says it is final on every node
    the bridge's components read (one node: at once)."""

    name: str
    admin: DevAccount
    relayer: DevAccount
    endpoint: Contract
    tokens: dict[str, Contract] = field(default_factory=dict)
    before_issue: Callable[[str, int], None] | None = None
    """Called with (isin, units) before any issue: the devnet registers the issuance."""
    block_time: float = 1.0
    relayer_key: dict[str, Any] = field(default_factory=dict)
    """The relayer file's key entry (``key_file`` or a token key table)."""
    lens: str = ""
    """The read lens's address (empty: none deployed; the adapters read leg by leg)."""

    def lens_entry(self) -> dict[str, str]:
        """``{"lens": address}`` for the ``[[ledgers]]`` entry, or nothing without a lens."""
        return {"lens": self.lens} if self.lens else {}

    @property
    def kind(self) -> str:
        """``evm``."""
        return "evm"

    @property
    def admin_rpc_url(self) -> str:
        """The node the devnet administers the endpoint through."""
        raise NotImplementedError

    def settle(self) -> None:
        """Return once the latest admin act is final on every node (one node: at once)."""

    # ---- DevLedger: admin
    def set_instructor(self, key: str, enabled: bool = True) -> None:
        """Register (or remove) a brokerage instruction key on the endpoint."""
        deploy.set_instructor(self.w3, self.admin.private_key, self.endpoint, key, enabled)
        self.settle()

    def set_depository(self, key: str) -> None:
        """``setDepository`` (admin, once)."""
        deploy.set_depository(self.w3, self.admin.private_key, self.endpoint, key)
        self.settle()

    def set_flow_limit(self, isin: str, counterpart: str, limit: FlowLimit) -> None:
        """Set the lane's flow limit as the endpoint admin."""
        deploy.set_flow_limit(
            self.w3,
            self.admin.private_key,
            self.endpoint,
            SecurityId(isin),
            LedgerId(counterpart),
            limit,
        )
        self.settle()

    @property
    def w3(self) -> Web3:
        """A synchronous web3 for setup and assertions (on :attr:`admin_rpc_url`)."""
        return deploy.connect(self.admin_rpc_url)

    def balance(self, isin: str, holder: str) -> int:
        """A holder's balance of ``isin`` on this ledger (latest block)."""
        return int(self.tokens[isin].functions.balanceOf(Web3.to_checksum_address(holder)).call())

    def total_supply(self, isin: str) -> int:
        """The token's total supply on this ledger."""
        return int(self.tokens[isin].functions.totalSupply().call())

    def escrowed(self, isin: str) -> int:
        """Units held in the bridge's escrow on this ledger (not the parked units, which the
        endpoint also holds: ``supplyOf``'s escrow figure)."""
        return int(self.endpoint.functions.supplyOf(SecurityId(isin).word).call()[1])

    # ---- parking
    def parked(self, transfer_id: bytes) -> int:
        """Units this endpoint parked for ``transfer_id`` and has not released."""
        return int(self.endpoint.functions.parked(transfer_id).call())

    def release_parked(self, transfer_id: bytes, to: str) -> None:
        """The issuer delivers the units parked for ``transfer_id`` to eligible holder ``to``."""
        deploy.release_parked(self.w3, self.admin.private_key, self.endpoint, transfer_id, to)
        self.settle()

    def set_eligible(self, isin: str, holder: str, eligible: bool = True) -> None:
        """Add ``holder`` to (or remove it from) the eligible holders."""
        deploy.set_eligible(self.w3, self.admin.private_key, self.tokens[isin], holder, eligible)
        self.settle()

    def issue(self, isin: str, holder: str, units: int, register: bool = True) -> None:
        """Issue ``units`` to an eligible holder (the issuer's own act, outside the bridge);
        ``register=False`` skips registering it with the depository (out-of-band)."""
        if register and self.before_issue is not None:
            self.before_issue(isin, units)
        deploy.issue(self.w3, self.admin.private_key, self.tokens[isin], holder, units)
        self.settle()

    def make_holder(self, isin: str, units: int = 0) -> DevAccount:
        """A new eligible holder, optionally issued ``units``."""
        holder = DevAccount.generate()
        token = self.tokens[isin]
        deploy.set_eligible(self.w3, self.admin.private_key, token, holder.address, True)
        if units:
            self.issue(isin, holder.address, units)
        else:
            self.settle()
        return holder

    # ---- bench hooks (optional DevLedger members, ADR 0019)
    def fund_holders(self, isin: str, holders: Sequence[str], units: int) -> None:
        """Make every holder eligible for ``isin`` and issue it ``units`` (not registered
        with the depository): all calls sent at once with consecutive nonces and an explicit
        gas limit (so each may be sent before its predecessor is mined; FIFO ordering mines
        an ``issue`` after the ``setEligible`` it depends on), then every receipt awaited."""
        from eth_account import Account
        from web3.types import Nonce, TxParams

        w3, token = self.w3, self.tokens[isin]
        sender = Account.from_key(self.admin.private_key)
        nonce = w3.eth.get_transaction_count(sender.address, "pending")
        calls = []
        for h in holders:
            address = Web3.to_checksum_address(h)
            calls += [
                token.functions.setEligible(address, True),
                token.functions.issue(address, units),
            ]
        hashes = []
        for offset, call in enumerate(calls):
            params: TxParams = {
                "from": sender.address,
                "nonce": Nonce(nonce + offset),
                "gas": 300_000,
                "chainId": w3.eth.chain_id,
            }
            tx = call.build_transaction(params)
            hashes.append(w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction))
        for tx_hash in hashes:
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
            if receipt["status"] != 1:
                raise RuntimeError(f"setup transaction 0x{bytes(tx_hash).hex()} reverted")
        self.settle()
