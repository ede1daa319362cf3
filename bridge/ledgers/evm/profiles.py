"""EVM profiles: what differs between EVM chains that run the same contracts (ADR 0019).

An EVM ledger is one kind (``evm``): the network word, bridge word, address codec, contracts
and identity rules are the same on anvil, go-ethereum, Besu and Kaia. What differs is how the
node behaves, and that is a profile chosen by the ``profile`` key of the ``[[ledgers]]``
entry: which chain ids the profile admits, whether finality is instant (``finality_depth``
must then be 0) and how a relayer prices its transactions.

Pure and light: no ``web3`` import; the adapter asks :func:`fee_fields` what to send.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from bridge.domain.errors import InvalidInput

KAIA_MAINNET = 8217
KAIA_KAIROS = 1001


class FeePolicy(enum.Enum):
    """How a relayer sets the fee fields of a transaction."""

    EIP1559 = "eip1559"
    """Ethereum: a tip of the node's suggestion and a fee cap of twice the base fee plus the
    tip (the price paid follows the protocol's base fee); the node's gas price without one."""
    KAIA = "kaia"
    """Kaia (KIP-71 base fee with a floor, KIP-162 tips). Kaia's ``eth_gasPrice`` is its own
    recommended fee cap, tip included (after Magma twice the next base fee; after the Kaia
    hard fork the base fee with a 10-15% buffer plus the recommended tip), and its
    ``eth_maxPriorityFeePerGas`` changed meaning with each hard fork (the unit price, then
    zero, then zero while uncongested). So: the fee cap is ``eth_gasPrice`` (never below
    the base fee) and the tip the node's suggestion, never more than the cap leaves above
    the base fee; on a fixed base fee that is a fee cap equal to the base fee and no tip.
    Without a base fee (a fixed unit price, before Magma) a legacy transaction at exactly
    the node's gas price, the only price the node accepts."""


@dataclass(frozen=True, slots=True)
class EvmProfile:
    """One EVM chain family's node behaviour.

    Guarantees: ``chain_ids`` (when set) is the complete set a ledger of this profile may
    use; with ``instant_finality`` the latest block is final, so a ledger of the profile is
    refused unless its ``finality_depth`` is 0 (a deeper setting would claim reorgs the chain
    cannot have and only slow every step down).
    """

    name: str
    chain_ids: frozenset[int] | None
    instant_finality: bool
    fee_policy: FeePolicy
    summary: str


ETHEREUM = EvmProfile(
    name="ethereum",
    chain_ids=None,
    instant_finality=False,
    fee_policy=FeePolicy.EIP1559,
    summary="Ethereum semantics (anvil, go-ethereum, Besu): finality_depth as configured",
)
KAIA = EvmProfile(
    name="kaia",
    chain_ids=frozenset({KAIA_MAINNET, KAIA_KAIROS}),
    instant_finality=True,
    fee_policy=FeePolicy.KAIA,
    summary="Kaia (Istanbul BFT, instant finality; mainnet 8217, Kairos 1001)",
)

PROFILES: dict[str, EvmProfile] = {p.name: p for p in (ETHEREUM, KAIA)}
"""Every profile by its ``profile`` key value."""


def get_profile(name: str) -> EvmProfile:
    """The profile ``name``; InvalidInput naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidInput(f"unknown EVM profile {name!r} (known: {sorted(PROFILES)})") from None


def profile_of(settings: Any) -> EvmProfile:
    """The profile of a ledger whose parsed table is ``settings`` (:data:`ETHEREUM` when the
    config was built in code without a table or the table names none)."""
    name = getattr(settings, "profile", None)
    return get_profile(name) if isinstance(name, str) else ETHEREUM


def check_ledger(profile: EvmProfile, ledger: str, chain_id: int, finality_depth: int) -> None:
    """Refuse a ledger entry the profile cannot describe (InvalidInput naming the ledger).

    SECURITY: the chain id is what EIP-155 signatures and the network word bind; a Kaia
    ledger with another chain id is a misconfiguration that would sign for another chain.
    """
    if profile.chain_ids is not None and chain_id not in profile.chain_ids:
        raise InvalidInput(
            f"ledger {ledger}: chain_id {chain_id} is not a {profile.name} chain "
            f"(expected one of {sorted(profile.chain_ids)})"
        )
    if profile.instant_finality and finality_depth != 0:
        raise InvalidInput(
            f"ledger {ledger}: {profile.name} has instant finality; finality_depth must be 0"
        )


def fee_fields(
    policy: FeePolicy, cap: int, base_fee: int | None, gas_price: int | None, tip: int | None
) -> dict[str, int]:
    """The fee fields of a transaction under ``policy``, none above ``cap`` (wei per gas).

    ``base_fee`` is the latest block's (None: the chain has none), ``gas_price`` the node's
    ``eth_gasPrice`` and ``tip`` its ``eth_maxPriorityFeePerGas``; a value the policy does not
    need for this ``base_fee`` may be None (see :func:`needs`). Never a multiple of the
    node's suggestion: where the relayer is most of the traffic, the suggestion is derived
    from the relayer's own recent prices, and bidding above it compounds block after block.
    """
    if base_fee is None:
        assert gas_price is not None
        return {"gasPrice": min(gas_price, cap)}
    assert tip is not None
    if policy is FeePolicy.EIP1559:
        tip = min(tip, cap)
        return {"maxFeePerGas": min(2 * base_fee + tip, cap), "maxPriorityFeePerGas": tip}
    assert gas_price is not None
    fee_cap = min(max(gas_price, base_fee), cap)
    return {"maxFeePerGas": fee_cap, "maxPriorityFeePerGas": min(tip, max(0, fee_cap - base_fee))}


def needs(policy: FeePolicy, base_fee: int | None) -> tuple[bool, bool]:
    """Whether :func:`fee_fields` needs (``gas_price``, ``tip``) for this ``base_fee``."""
    if base_fee is None:
        return True, False
    return policy is FeePolicy.KAIA, True
