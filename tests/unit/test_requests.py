"""Validation of brokerage requests against a network file, with precise errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bridge.config import NetworkConfig, load_network
from bridge.coordinator.requests import parse_amount, validate_request
from bridge.domain.errors import InvalidInput, NotFound

pytestmark = pytest.mark.unit

MEMBERS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
SENDER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
RECIPIENT = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"

NETWORK_TOML = f"""
[committee]
epoch = 1
threshold = 3
members = {MEMBERS!r}

[securities]
isins = ["KR7005930003", "US0378331005"]

[[ledgers]]
id = "brokerage-a"
kind = "evm"
rpc_url = "http://127.0.0.1:8545"
bridge = "0x1111111111111111111111111111111111111111"
chain_id = 31337
finality_depth = 0

[[ledgers]]
id = "brokerage-b"
kind = "evm"
rpc_url = "http://127.0.0.1:8546"
bridge = "0x2222222222222222222222222222222222222222"
chain_id = 31338
finality_depth = 0
"""


@pytest.fixture
def network(tmp_path: Path) -> NetworkConfig:
    path = tmp_path / "network.toml"
    path.write_text(NETWORK_TOML)
    return load_network(path)


def request(network: NetworkConfig, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "idempotency_key": "order-42",
        "security": "KR7005930003",
        "source_ledger": "brokerage-a",
        "target_ledger": "brokerage-b",
        "sender": SENDER,
        "recipient": RECIPIENT,
        "amount": "100",
    }
    fields.update(overrides)
    return validate_request(network, **fields)


# -- parse_amount --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "amount must be at least 1"),
        ("000", "amount must be at least 1"),
        ("-5", "amount must be positive, got a negative number"),
        ("abc", "amount 'abc' is not a decimal integer"),
        ("1.5", "amount '1.5' is not a decimal integer"),
        ("1e3", "amount '1e3' is not a decimal integer"),
        ("+5", "amount '+5' is not a decimal integer"),
        ("1_000", "amount '1_000' is not a decimal integer"),
        ("0x10", "amount '0x10' is not a decimal integer"),
        ("", "amount '' is not a decimal integer"),
        ("\u0661\u0662", "is not a decimal integer"),  # Arabic-Indic digits
        (str(2**256), "amount exceeds 2^256-1"),
        ("9" * 100, "amount exceeds 2^256-1"),
    ],
)
def test_parse_amount_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_amount(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("100", 100), (" 7 ", 7), ("007", 7), (str(2**256 - 1), 2**256 - 1)],
)
def test_parse_amount_accepts(text: str, value: int) -> None:
    assert parse_amount(text) == value


# -- validate_request ----------------------------------------------------------------------


def test_valid_request_is_normalised(network: NetworkConfig) -> None:
    r = request(network, sender=SENDER.lower(), recipient="0x" + RECIPIENT[2:].upper())
    assert r.idempotency_key == "order-42"
    assert r.security == "KR7005930003"
    assert (r.source_ledger, r.target_ledger) == ("brokerage-a", "brokerage-b")
    assert r.sender == SENDER  # EIP-55
    assert r.recipient == RECIPIENT  # EIP-55
    assert r.amount == 100


def test_max_amount_accepted(network: NetworkConfig) -> None:
    assert request(network, amount=str(2**256 - 1)).amount == 2**256 - 1


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("0", "amount must be at least 1"),
        ("-5", "amount must be positive"),
        ("abc", "is not a decimal integer"),
        ("1.5", "is not a decimal integer"),
        (str(2**256), "amount exceeds 2"),
    ],
)
def test_bad_amount_rejected(network: NetworkConfig, amount: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        request(network, amount=amount)


def test_unknown_security_is_not_found(network: NetworkConfig) -> None:
    # A valid ISIN (BAE Systems) that is not registered with the bridge.
    with pytest.raises(NotFound, match="security GB0002634946 is not registered"):
        request(network, security="GB0002634946")


@pytest.mark.parametrize("isin", ["KR7005930004", "kr7005930003", "KR700593000"])
def test_invalid_isin_is_invalid_input(network: NetworkConfig, isin: str) -> None:
    with pytest.raises(InvalidInput, match=f"security_id '{isin}' is not a valid ISIN"):
        request(network, security=isin)


def test_missing_security_is_invalid_input(network: NetworkConfig) -> None:
    with pytest.raises(InvalidInput, match="security_id is required"):
        request(network, security="")


@pytest.mark.parametrize("field", ["source_ledger", "target_ledger"])
def test_unknown_ledger_is_not_found(network: NetworkConfig, field: str) -> None:
    with pytest.raises(NotFound, match=f"{field} 'brokerage-z' is not a connected ledger"):
        request(network, **{field: "brokerage-z"})


@pytest.mark.parametrize("field", ["source_ledger", "target_ledger"])
def test_missing_ledger_is_invalid_input(network: NetworkConfig, field: str) -> None:
    with pytest.raises(InvalidInput, match=f"{field} is required"):
        request(network, **{field: ""})


def test_same_ledger_is_invalid_input(network: NetworkConfig) -> None:
    with pytest.raises(InvalidInput, match="source_ledger and target_ledger must differ"):
        request(network, target_ledger="brokerage-a")


@pytest.mark.parametrize("field", ["sender", "recipient"])
@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "0x1234",
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # bad checksum
    ],
)
def test_malformed_address_names_the_field(
    network: NetworkConfig, field: str, address: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}: "):
        request(network, **{field: address})


@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_zero_address_refused(network: NetworkConfig, field: str) -> None:
    with pytest.raises(InvalidInput, match=f"{field} must not be the zero address"):
        request(network, **{field: "0x" + "0" * 40})


@pytest.mark.parametrize("key", ["", "k" * 129, "has space", "tab\there", "caf\u00e9", "\x7f"])
def test_bad_idempotency_key_refused(network: NetworkConfig, key: str) -> None:
    with pytest.raises(InvalidInput, match="idempotency_key must be 1-128 printable ASCII"):
        request(network, idempotency_key=key)


@pytest.mark.parametrize("key", ["order-42\n", "k" * 128 + "\n"])
def test_idempotency_key_with_trailing_newline_refused(network: NetworkConfig, key: str) -> None:
    with pytest.raises(InvalidInput, match="idempotency_key"):
        request(network, idempotency_key=key)


@pytest.mark.parametrize("key", ["a", "k" * 128, "!~", "order/2024-01-01#7"])
def test_good_idempotency_keys_accepted(network: NetworkConfig, key: str) -> None:
    assert request(network, idempotency_key=key).idempotency_key == key


def test_validation_order_key_before_security(network: NetworkConfig) -> None:
    with pytest.raises(InvalidInput, match="idempotency_key"):
        request(network, idempotency_key="", security="bad")


def test_fingerprint_ignores_key_and_address_case(network: NetworkConfig) -> None:
    a = request(network, idempotency_key="a")
    b = request(network, idempotency_key="b", sender=SENDER.lower())
    c = request(network, idempotency_key="a", amount="101")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert a.fingerprint() == (
        f"KR7005930003|brokerage-a|brokerage-b|{SENDER.lower()}|{RECIPIENT.lower()}|100"
    )


@pytest.mark.security
@pytest.mark.parametrize(
    "key", ["onchain:0x" + "ab" * 32, "onchain:", "ONCHAIN:0x01", "OnChain:order-1"]
)
def test_the_adoption_key_prefix_is_reserved(network: NetworkConfig, key: str) -> None:
    """A brokerage that claims a holder-direct lock's adoption key first would block it."""
    with pytest.raises(
        InvalidInput,
        match=re.escape(
            "idempotency_key must not start with 'onchain:': that prefix is reserved for"
            " transfers adopted from holder-direct locks"
        ),
    ):
        request(network, idempotency_key=key)


def test_a_key_merely_containing_onchain_is_accepted(network: NetworkConfig) -> None:
    assert request(network, idempotency_key="order-onchain:1").idempotency_key == (
        "order-onchain:1"
    )
