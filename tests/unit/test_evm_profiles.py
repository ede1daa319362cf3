"""EVM profiles (ADR 0019): the Kaia profile's chain ids, finality and fee rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.domain.errors import InvalidInput
from bridge.ledgers.evm.profiles import (
    ETHEREUM,
    KAIA,
    FeePolicy,
    fee_fields,
    get_profile,
    needs,
    profile_of,
)
from bridge.ledgers.kinds import get_kind, parse_table

pytestmark = [pytest.mark.unit, pytest.mark.kaia]

GKEI = 10**9
CAP = 1000 * GKEI


def _entry(**over: Any) -> dict[str, Any]:
    return {
        "id": "kaia",
        "kind": "evm",
        "rpc_url": "https://kaia.example",
        "bridge": "0x" + "11" * 20,
        "chain_id": 1001,
        "profile": "kaia",
    } | over


def _config(**over: Any) -> Any:
    kind = get_kind("evm")
    return kind.ledger_config(parse_table(kind, _entry(**over), "ledger kaia"), Path("."))


@pytest.mark.parametrize("chain_id", [8217, 1001])
def test_kaia_admits_mainnet_and_kairos(chain_id: int) -> None:
    config = _config(chain_id=chain_id)
    assert config.chain_id == chain_id
    assert config.finality_depth == 0
    assert profile_of(config.settings) is KAIA


def test_kaia_refuses_another_chain_id() -> None:
    with pytest.raises(InvalidInput, match=r"ledger kaia: chain_id 1 is not a kaia chain"):
        _config(chain_id=1)


def test_kaia_refuses_a_finality_depth() -> None:
    with pytest.raises(InvalidInput, match=r"instant finality; finality_depth must be 0"):
        _config(finality_depth=2)


def test_an_unknown_profile_is_refused_naming_the_key() -> None:
    with pytest.raises(InvalidInput, match=r"ledger kaia: profile: input should be"):
        _config(profile="besu")
    with pytest.raises(InvalidInput, match=r"unknown EVM profile 'besu'"):
        get_profile("besu")


def test_no_profile_is_ethereum_and_admits_any_chain_and_depth() -> None:
    config = _config(profile="ethereum", chain_id=1, finality_depth=12)
    assert profile_of(config.settings) is ETHEREUM
    assert profile_of(None) is ETHEREUM


def test_kaia_fixed_base_fee_pays_exactly_the_base_fee() -> None:
    """A fixed base fee and a node price equal to it: fee cap = base fee and no tip, even
    when the node's tip suggestion is not zero (anvil's constant 1 gwei)."""
    assert needs(FeePolicy.KAIA, 25 * GKEI) == (True, True)
    fees = fee_fields(FeePolicy.KAIA, CAP, 25 * GKEI, 25 * GKEI, GKEI)
    assert fees == {"maxFeePerGas": 25 * GKEI, "maxPriorityFeePerGas": 0}


def test_kaia_after_magma_pays_at_most_twice_the_base_fee_and_no_tip() -> None:
    fees = fee_fields(FeePolicy.KAIA, CAP, 25 * GKEI, 50 * GKEI, 0)
    assert fees == {"maxFeePerGas": 50 * GKEI, "maxPriorityFeePerGas": 0}


def test_kaia_congested_uses_the_nodes_price_and_tip_never_above_the_cap() -> None:
    fees = fee_fields(FeePolicy.KAIA, CAP, 30 * GKEI, 62 * GKEI, 2 * GKEI)
    assert fees == {"maxFeePerGas": 62 * GKEI, "maxPriorityFeePerGas": 2 * GKEI}
    # a node price below the base fee (stale suggestion) still covers the base fee, no tip
    fees = fee_fields(FeePolicy.KAIA, CAP, 30 * GKEI, 20 * GKEI, 50 * GKEI)
    assert fees == {"maxFeePerGas": 30 * GKEI, "maxPriorityFeePerGas": 0}
    # the operator's cap wins over everything (the step then waits for a lower base fee)
    fees = fee_fields(FeePolicy.KAIA, 10 * GKEI, 30 * GKEI, 62 * GKEI, 2 * GKEI)
    assert fees == {"maxFeePerGas": 10 * GKEI, "maxPriorityFeePerGas": 0}


def test_kaia_fixed_unit_price_is_a_legacy_transaction_at_the_unit_price() -> None:
    """Before Magma: no base fee, and eth_maxPriorityFeePerGas returns the unit price (not a
    tip), so it is not read and never added to anything."""
    assert needs(FeePolicy.KAIA, None) == (True, False)
    assert fee_fields(FeePolicy.KAIA, CAP, None, 250 * GKEI, None) == {"gasPrice": 250 * GKEI}


def test_ethereum_policy_is_unchanged() -> None:
    assert needs(FeePolicy.EIP1559, 7) == (False, True)
    assert fee_fields(FeePolicy.EIP1559, CAP, 10 * GKEI, None, GKEI) == {
        "maxFeePerGas": 21 * GKEI,
        "maxPriorityFeePerGas": GKEI,
    }
    assert fee_fields(FeePolicy.EIP1559, 5 * GKEI, None, 9 * GKEI, None) == {"gasPrice": 5 * GKEI}
