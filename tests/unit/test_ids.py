"""Identifiers: ISIN check digits, security/ledger words and EVM address parsing."""

from __future__ import annotations

import pytest

from bridge.domain.errors import InvalidInput
from bridge.domain.ids import (
    LedgerId,
    SecurityId,
    evm_address_word,
    is_valid_isin,
    isin_check_digit,
    parse_evm_address,
    word_to_evm_address,
)

pytestmark = pytest.mark.unit

# EIP-55 test vectors (from the EIP itself).
EIP55_VECTORS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


# -- ISIN ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("isin", "digit"),
    [
        ("KR7005930003", 3),  # Samsung Electronics
        ("US0378331005", 5),  # Apple
        ("KR5701ES0016", 6),
        ("GB0002634946", 6),  # BAE Systems
        ("DE000BAY0017", 7),  # Bayer
        ("AU0000XVGZA3", 3),
    ],
)
def test_real_isins_are_valid_and_check_digit_matches(isin: str, digit: int) -> None:
    assert isin_check_digit(isin[:11]) == digit
    assert is_valid_isin(isin)


@pytest.mark.parametrize(
    "isin",
    [
        "KR7005930004",  # wrong check digit
        "US0378331006",  # wrong check digit
        "us0378331005",  # lowercase
        "Us0378331005",  # partly lowercase
        "US037833100",  # too short
        "US03783310055",  # too long
        "",
        "1S0378331005",  # country code must be letters
        "US037833100X",  # check digit must be a digit
        "US-378331005",  # punctuation
        " US0378331005",  # leading space
    ],
)
def test_malformed_isins_are_invalid(isin: str) -> None:
    assert not is_valid_isin(isin)


def test_isin_with_trailing_newline_is_invalid() -> None:
    assert not is_valid_isin("US0378331005\n")


def test_isin_answers_kept_are_the_same_answers() -> None:
    """``is_valid_isin`` keeps its answers for twelve-character strings (issue 14): asked
    again, every answer is the same, a str subclass and a non-str are answered without it,
    and nothing longer than an ISIN is kept (what a caller makes it hold is bounded)."""
    from bridge.core import words

    class Text(str):
        pass

    for value in ("KR7005930003", "KR7005930004", "us0378331005", "US037833100X"):
        first = [is_valid_isin(value) for _ in range(3)]
        assert first == [words._check_isin(value)] * 3
        assert is_valid_isin(Text(value)) is first[0]
    for value in (b"KR7005930003", 7, None, ["KR7005930003"]):
        assert is_valid_isin(value) is False
    words._is_valid_isin_text.cache_clear()
    assert not is_valid_isin("KR7005930003" * 1000)
    assert not is_valid_isin("X" * 11)
    assert words._is_valid_isin_text.cache_info().currsize == 0, "only ISIN-sized text is kept"
    assert is_valid_isin("KR7005930003")
    assert words._is_valid_isin_text.cache_info().currsize == 1


def test_security_id_word_is_right_padded_ascii_and_round_trips() -> None:
    sid = SecurityId("KR7005930003")
    assert sid.word == b"KR7005930003" + b"\0" * 20
    assert len(sid.word) == 32
    assert SecurityId.from_word(sid.word) == sid
    assert str(sid) == "KR7005930003"


def test_security_id_rejects_invalid_isin_with_message() -> None:
    with pytest.raises(InvalidInput, match=r"security id 'US0378331006' is not a valid ISIN"):
        SecurityId("US0378331006")


def test_security_id_from_word_rejects_non_ascii_and_non_isin() -> None:
    with pytest.raises(InvalidInput, match="not ASCII"):
        SecurityId.from_word(b"\xff" * 12 + b"\0" * 20)
    with pytest.raises(InvalidInput, match="not a valid ISIN"):
        SecurityId.from_word(b"US0378331006" + b"\0" * 20)
    with pytest.raises(InvalidInput, match="not a valid ISIN"):
        SecurityId.from_word(b"\0" * 32)


# -- LedgerId ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["brokerage-a", "a", "0", "ksd-1", "a" * 63])
def test_ledger_id_accepts_valid_names(name: str) -> None:
    assert LedgerId(name).name == name
    assert str(LedgerId(name)) == name


@pytest.mark.parametrize(
    "name", ["", "Brokerage", "-leading-dash", "a" * 64, "under_score", "dot.name", "a b"]
)
def test_ledger_id_rejects_invalid_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="must be 1-63 lowercase letters"):
        LedgerId(name)


def test_ledger_id_rejects_trailing_newline() -> None:
    with pytest.raises(InvalidInput):
        LedgerId("brokerage-a\n")


def test_ledger_id_word_is_keccak_of_name() -> None:
    # keccak256("abc"), the standard Keccak-256 test vector.
    assert (
        LedgerId("abc").word.hex()
        == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    )
    assert LedgerId("brokerage-a").word != LedgerId("brokerage-b").word


# -- EVM addresses -------------------------------------------------------------------------


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_checksummed_addresses_parse_and_round_trip(address: str) -> None:
    raw = parse_evm_address(address)
    assert raw == bytes.fromhex(address[2:])
    word = evm_address_word(address)
    assert word == b"\0" * 12 + raw
    assert word_to_evm_address(word) == address


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_all_lowercase_and_all_uppercase_bodies_are_accepted(address: str) -> None:
    expected = bytes.fromhex(address[2:])
    assert parse_evm_address(address.lower()) == expected
    assert parse_evm_address("0x" + address[2:].upper()) == expected


def test_bad_eip55_checksum_is_rejected() -> None:
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    bad = good[:-1] + "D"  # flip the case of the last letter
    with pytest.raises(InvalidInput, match="invalid EIP-55 checksum"):
        parse_evm_address(bad)


def test_a_kept_address_never_vouches_for_another_spelling_of_it() -> None:
    # The same 20 bytes accepted in three spellings first, then a wrong checksum of them: the
    # kept answers are per exact string, and refusals are never kept.
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    for spelling in (good, good.lower(), "0x" + good[2:].upper()):
        assert parse_evm_address(spelling) == parse_evm_address(spelling)
    bad = good[:-1] + "D"
    for _ in range(2):
        with pytest.raises(InvalidInput, match="invalid EIP-55 checksum"):
            parse_evm_address(bad)
    word = evm_address_word(good)
    assert word_to_evm_address(word) == word_to_evm_address(word) == good
    with pytest.raises(InvalidInput, match="does not hold an EVM address"):
        word_to_evm_address(b"\x01" + word[1:])


@pytest.mark.parametrize(
    "address",
    [
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # no 0x
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA",  # 19 bytes
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed00",  # 21 bytes
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",  # bad hex
        "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # capital X
        "",
        "0x",
    ],
)
def test_malformed_addresses_are_rejected(address: str) -> None:
    with pytest.raises(InvalidInput, match="is not a 0x-prefixed 20-byte hex address"):
        parse_evm_address(address)


def test_non_string_address_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        parse_evm_address(b"\x11" * 20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "word",
    [
        b"\x01" + b"\0" * 11 + b"\x11" * 20,  # non-zero high byte
        b"\0" * 11 + b"\x01" + b"\x11" * 20,  # non-zero byte 11
        b"\x11" * 20,  # too short
        b"\0" * 13 + b"\x11" * 20,  # too long
        SecurityId("US0378331005").word,  # a security word is not an address
    ],
)
def test_word_to_evm_address_rejects_non_address_words(word: bytes) -> None:
    with pytest.raises(InvalidInput, match="does not hold an EVM address"):
        word_to_evm_address(word)


def test_word_to_evm_address_checksums_a_lowercase_input() -> None:
    word = evm_address_word("0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359")
    assert word_to_evm_address(word) == "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
