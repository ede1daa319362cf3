"""Synchronous web3 helpers that stand up an EVM ledger for the demo and the tests.

Deploy a :class:`BridgeEndpoint` for a ledger and committee, deploy a ``SecurityToken`` per
ISIN, wire them together and manage relayers, eligibility, freezes, pauses and issuance.
Every write goes through :func:`send_tx`, which signs locally with a private key held by
the caller, waits for the receipt and raises :class:`TxReverted` (carrying the decoded
custom error name) when the transaction reverts. Nothing here is used by the production
relayers, which have their own asynchronous adapter.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import TxParams, TxReceipt

from bridge.core.words import evm_network_word
from bridge.domain import governance
from bridge.domain.claims import ClaimDomain
from bridge.domain.committee import Committee, CommitteeRotation
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.legs import SignatureSet
from bridge.ledgers.evm.artifacts import load_abi, load_bytecode
from bridge.ledgers.evm.revert import decode_revert

GAS_HEADROOM = 1.25
RECEIPT_TIMEOUT = 30.0
RECEIPT_POLL = 0.02


class TxReverted(Exception):
    """A transaction (or its gas estimate) reverted; ``error_name`` is the custom error.

    ``error_name`` is e.g. ``"BadState"`` or ``"HolderFrozen"`` (``"Error"`` for a revert
    string, ``"Reverted"`` when the data matches no known error); ``detail`` lists the
    decoded arguments as ``name=value`` pairs; ``data`` is the raw revert data;
    ``tx_hash`` is set when the transaction was mined (it reverted on-chain) and ``None``
    when it was refused at gas estimation and never sent.
    """

    def __init__(
        self, function: str, error_name: str, detail: str, data: bytes, tx_hash: bytes | None
    ) -> None:
        where = f"mined tx 0x{tx_hash.hex()}" if tx_hash is not None else "gas estimate"
        super().__init__(f"{function} reverted with {error_name}({detail}) [{where}]")
        self.function = function
        self.error_name = error_name
        self.detail = detail
        self.data = data
        self.tx_hash = tx_hash


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A synchronous Web3 on ``rpc_url``; raises ConnectionError if the node does not answer."""
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    if not w3.is_connected():
        raise ConnectionError(f"no JSON-RPC node answers at {rpc_url}")
    return w3


def address_of(private_key: bytes) -> ChecksumAddress:
    """The checksummed address of a 32-byte secp256k1 private key."""
    return ChecksumAddress(Account.from_key(private_key).address)


def send_tx(
    w3: Web3,
    private_key: bytes,
    call: ContractFunction | ContractConstructor,
    *,
    gas: int | None = None,
) -> TxReceipt:
    """Sign ``call`` with ``private_key``, send it and wait for a successful receipt.

    Without ``gas`` the transaction is simulated first (gas estimate plus headroom), so a
    revert raises :class:`TxReverted` without sending anything. With an explicit ``gas``
    it is sent as is; if it is mined with status 0 the revert data is recovered by
    replaying the call at the receipt's block and :class:`TxReverted` carries the tx hash.
    The nonce is the sender's pending count: one caller per key at a time.
    """
    sender = Account.from_key(private_key)
    label = _label(call)
    params: TxParams = {
        "from": sender.address,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    if gas is None:
        try:
            estimate = call.estimate_gas({"from": sender.address})
        except ContractLogicError as exc:
            raise _reverted(label, exc, None) from exc
        params["gas"] = int(estimate * GAS_HEADROOM)
    else:
        params["gas"] = gas
    tx = call.build_transaction(params)
    signed = sender.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(
        tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=RECEIPT_POLL
    )
    if receipt["status"] != 1:
        raise _replayed_revert(w3, label, tx, receipt, bytes(tx_hash))
    return receipt


def deploy_contract(w3: Web3, private_key: bytes, name: str, *args: Any) -> Contract:
    """Deploy contract ``name`` from the committed artifacts with constructor ``args``.

    Returns the contract bound to its new address; guarantees code exists there.
    """
    factory = w3.eth.contract(abi=load_abi(name), bytecode=HexBytes(load_bytecode(name)))
    receipt = send_tx(w3, private_key, factory.constructor(*args))
    address = receipt["contractAddress"]
    if address is None or not w3.eth.get_code(address):
        raise RuntimeError(f"deploying {name} left no code (tx {receipt['transactionHash'].hex()})")
    return w3.eth.contract(address=address, abi=load_abi(name))


def endpoint_at(w3: Web3, address: str) -> Contract:
    """A BridgeEndpoint already deployed at ``address``."""
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_abi("BridgeEndpoint")
    )


def token_at(w3: Web3, address: str) -> Contract:
    """A SecurityToken already deployed at ``address``."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi("SecurityToken"))


def deploy_endpoint(w3: Web3, admin_key: bytes, ledger: LedgerId, committee: Committee) -> Contract:
    """Deploy a BridgeEndpoint for ``ledger`` verifying certificates of ``committee``.

    The deployer becomes the endpoint's admin. Members are passed in ascending address
    order, as the contract requires. Guarantees: the deployed endpoint reports
    ``ledger.word`` and exactly this committee (epoch, threshold, members).
    """
    members = [Web3.to_checksum_address(m) for m in sorted(committee.members)]
    endpoint = deploy_contract(
        w3,
        admin_key,
        "BridgeEndpoint",
        ledger.word,
        address_of(admin_key),
        members,
        committee.threshold,
        committee.epoch,
    )
    epoch, threshold, on_chain = endpoint.functions.committee().call()
    if (
        bytes(endpoint.functions.ledgerId().call()) != ledger.word
        or (epoch, threshold) != (committee.epoch, committee.threshold)
        or [Web3.to_checksum_address(m) for m in on_chain] != members
    ):
        raise RuntimeError(f"endpoint at {endpoint.address} does not report its configuration")
    return endpoint


def deploy_security_token(
    w3: Web3,
    admin_key: bytes,
    security: SecurityId,
    *,
    name: str | None = None,
    symbol: str | None = None,
) -> Contract:
    """Deploy a SecurityToken for ``security``; the deployer is its admin (issuer).

    ``name`` defaults to ``"KSTB <ISIN>"`` and ``symbol`` to the ISIN. The token starts
    unpaused, with no holders, no supply and no bridge.
    """
    return deploy_contract(
        w3,
        admin_key,
        "SecurityToken",
        name if name is not None else f"KSTB {security.isin}",
        symbol if symbol is not None else security.isin,
        security.word,
        address_of(admin_key),
    )


def register_security(
    w3: Web3,
    endpoint_admin_key: bytes,
    endpoint: Contract,
    token: Contract,
    *,
    token_admin_key: bytes | None = None,
) -> None:
    """Register ``token`` on ``endpoint`` under its security id and make the endpoint the
    token's bridge. ``token_admin_key`` defaults to ``endpoint_admin_key``.

    Guarantees on return: ``endpoint.tokenOf(id) == token`` and ``token.bridge() == endpoint``.
    Raises TxReverted (e.g. SecurityAlreadyRegistered, BridgeHoldsEscrow) otherwise.
    """
    security_word = bytes(token.functions.securityId().call())
    if endpoint.functions.tokenOf(security_word).call() != token.address:
        send_tx(
            w3,
            endpoint_admin_key,
            endpoint.functions.registerSecurity(security_word, token.address),
        )
    if token.functions.bridge().call() != endpoint.address:
        send_tx(
            w3,
            token_admin_key if token_admin_key is not None else endpoint_admin_key,
            token.functions.setBridge(endpoint.address),
        )


def set_relayer(
    w3: Web3, admin_key: bytes, endpoint: Contract, relayer: str, enabled: bool = True
) -> TxReceipt:
    """Grant (or with ``enabled=False`` revoke) the relayer role on ``endpoint``."""
    return send_tx(
        w3, admin_key, endpoint.functions.setRelayer(Web3.to_checksum_address(relayer), enabled)
    )


def set_instructor(
    w3: Web3, admin_key: bytes, endpoint: Contract, key: str, enabled: bool = True
) -> TxReceipt:
    """Register (or with ``enabled=False`` remove) brokerage instruction key ``key`` on
    ``endpoint``; a relayer's lock must name a registered key (else UnknownInstructor)."""
    return send_tx(
        w3, admin_key, endpoint.functions.setInstructor(Web3.to_checksum_address(key), enabled)
    )


def set_eligible(
    w3: Web3, admin_key: bytes, token: Contract, holder: str, eligible: bool = True
) -> TxReceipt:
    """Add ``holder`` to (or remove it from) the token's eligibility list."""
    return send_tx(
        w3, admin_key, token.functions.setEligible(Web3.to_checksum_address(holder), eligible)
    )


def set_frozen(
    w3: Web3, admin_key: bytes, token: Contract, holder: str, frozen: bool = True
) -> TxReceipt:
    """Freeze (or unfreeze) ``holder`` on the token."""
    return send_tx(
        w3, admin_key, token.functions.setFrozen(Web3.to_checksum_address(holder), frozen)
    )


def set_paused(w3: Web3, admin_key: bytes, token: Contract, paused: bool) -> TxReceipt | None:
    """Pause or unpause the token; returns None (sends nothing) when already in that state."""
    if bool(token.functions.paused().call()) == paused:
        return None
    fn = token.functions.pause() if paused else token.functions.unpause()
    return send_tx(w3, admin_key, fn)


def issue(w3: Web3, admin_key: bytes, token: Contract, to: str, amount: int) -> TxReceipt:
    """Issue ``amount`` new units to ``to`` (who must be eligible and not frozen)."""
    return send_tx(w3, admin_key, token.functions.issue(Web3.to_checksum_address(to), amount))


# ---- admin
def propose_admin(w3: Web3, admin_key: bytes, contract: Contract, new_admin: str) -> TxReceipt:
    """Propose ``new_admin`` as the admin of an endpoint or token (address(0) cancels); the
    admin changes only when the proposed address calls :func:`accept_admin`."""
    return send_tx(
        w3, admin_key, contract.functions.proposeAdmin(Web3.to_checksum_address(new_admin))
    )


def accept_admin(w3: Web3, new_admin_key: bytes, contract: Contract) -> TxReceipt:
    """Accept a pending admin proposal (NotPendingAdmin unless the key was proposed)."""
    return send_tx(w3, new_admin_key, contract.functions.acceptAdmin())


# ---- parking
def release_parked(
    w3: Web3, token_admin_key: bytes, endpoint: Contract, transfer_id: bytes, to: str
) -> TxReceipt:
    """Deliver the units ``endpoint`` parked for ``transfer_id`` to ``to`` (the token admin's
    call; NotParked, NotTokenAdmin or RecipientRefused otherwise)."""
    return send_tx(
        w3,
        token_admin_key,
        endpoint.functions.releaseParked(transfer_id, Web3.to_checksum_address(to)),
    )


# ---- flow limits (ADR 0010)
def set_flow_limit(
    w3: Web3,
    admin_key: bytes,
    endpoint: Contract,
    security: SecurityId,
    counterpart: LedgerId,
    limit: FlowLimit,
) -> TxReceipt:
    """``setFlowLimit`` for the lane (``security``, ``counterpart``) on ``endpoint`` (admin
    only; ``FlowLimit()`` removes the lane's limit)."""
    return send_tx(
        w3,
        admin_key,
        endpoint.functions.setFlowLimit(
            security.word,
            counterpart.word,
            limit.outbound_capacity,
            limit.inbound_capacity,
            limit.window,
            limit.share_bps,
            limit.large_threshold,
            limit.large_delay,
        ),
    )


def claim_domain(ledger: LedgerId, endpoint_address: str, epoch: int, chain_id: int) -> ClaimDomain:
    """The domain committee members sign in for claims verified by this endpoint."""
    return ClaimDomain(
        ledger=ledger.word,
        contract=evm_address_word(endpoint_address),
        epoch=epoch,
        network=evm_network_word(chain_id),
    )


# ---- committee rotation


def rotate_committee(
    w3: Web3,
    private_key: bytes,
    endpoint: Contract,
    rotation: CommitteeRotation,
    certificate: SignatureSet,
    *,
    gas: int | None = None,
) -> TxReceipt:
    """Send ``rotateCommittee`` for ``rotation`` with ``certificate`` (any funded account:
    the certificate is the authority). Raises TxReverted with the endpoint's error."""
    return send_tx(
        w3,
        private_key,
        endpoint.functions.rotateCommittee(
            rotation.epoch,
            rotation.next.epoch,
            rotation.next.threshold,
            [Web3.to_checksum_address(m) for m in rotation.next.members],
            rotation.activation,
            rotation.overlap,
            (certificate.epoch, b"".join(certificate.signatures)),
        ),
        gas=gas,
    )


def _label(call: ContractFunction | ContractConstructor) -> str:
    if isinstance(call, ContractConstructor):
        return "constructor"
    return str(call.fn_name)


def _reverted(label: str, exc: ContractLogicError, tx_hash: bytes | None) -> TxReverted:
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        raw = bytes.fromhex(data[2:])
        name, detail = decode_revert(raw)
        return TxReverted(label, name, detail, raw, tx_hash)
    return TxReverted(label, "Reverted", str(exc.message or exc), b"", tx_hash)


def _replayed_revert(
    w3: Web3, label: str, tx: TxParams, receipt: TxReceipt, tx_hash: bytes
) -> TxReverted:
    """Re-run a mined, reverted transaction as a call to recover its revert data.

    A reverted transaction changes no contract state, so the state after its block is the
    state it ran against when it is alone in its block (anvil automine, one tx per block).
    """
    replay: TxParams = {"from": tx["from"], "data": tx["data"], "gas": tx["gas"]}
    if "to" in tx:
        replay["to"] = tx["to"]
    try:
        w3.eth.call(replay, block_identifier=receipt["blockNumber"])
    except ContractLogicError as exc:
        return _reverted(label, exc, tx_hash)
    return TxReverted(label, "Reverted", "no revert data on replay", b"", tx_hash)


# ---- depository halt

order_abi_tuple = governance.order_abi_tuple


def set_depository(w3: Web3, admin_key: bytes, endpoint: Contract, key: str) -> TxReceipt:
    """``setDepository``: admin only, and only while the endpoint has no depository key."""
    return send_tx(w3, admin_key, endpoint.functions.setDepository(Web3.to_checksum_address(key)))


# ---- read lens (issue 14 item 4)
def deploy_lens(w3: Web3, deployer_key: bytes) -> Contract:
    """Deploy a :file:`BridgeLens` (no arguments, no owner, no state): the read-only view that
    reads many legs or supplies of any endpoint in one ``eth_call``. One per chain serves
    every endpoint on it; its address goes in the ledger entry's ``lens`` key."""
    return deploy_contract(w3, deployer_key, "BridgeLens")
