"""Decode EVM revert data into the contracts' custom errors: typed reason and ABI arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import Figure, LedgerRejected
from bridge.domain.hashing import keccak256
from bridge.ledgers.evm.artifacts import load_abi

_CONTRACTS = ("BridgeEndpoint", "SecurityToken")


def _type_string(inp: dict[str, Any]) -> str:
    if inp["type"].startswith("tuple"):
        inner = ",".join(_type_string(c) for c in inp["components"])
        return f"({inner}){inp['type'][5:]}"
    return str(inp["type"])


@cache
def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for name in _CONTRACTS:
        for item in load_abi(name):
            if item.get("type") != "error":
                continue
            types = [_type_string(i) for i in item["inputs"]]
            names = [i["name"] for i in item["inputs"]]
            selector = keccak256(f"{item['name']}({','.join(types)})".encode())[:4]
            table[selector] = (item["name"], types, names)
    return table


@dataclass(frozen=True)
class Revert:
    """One decoded revert: the error's name, its arguments by ABI name, and a readable detail.

    ``figures`` holds integers as ``int`` and bytes/addresses as 0x-hex strings, exactly as
    the ABI encoded them; nothing in it comes from a message.
    """

    name: str
    figures: Mapping[str, Figure]
    detail: str


def _figure(value: Any) -> Figure:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return str(value)


def decode(data: bytes) -> Revert:
    """Decode revert ``data`` against the contracts' ABIs; never raises.

    Unknown selectors, ``Error(string)`` and undecodable arguments yield the names
    ``Reverted`` / ``Error`` with no figures (mapped to ``UnknownRefusal`` by
    :func:`refusal`).
    """
    if len(data) < 4:
        return Revert("Reverted", {}, "no revert data")
    entry = _error_table().get(data[:4])
    if entry is None:
        if data[:4] == bytes.fromhex("08c379a0"):
            try:
                (msg,) = abi_decode(["string"], data[4:])
            except Exception:
                return Revert("Reverted", {}, "0x" + data.hex())
            return Revert("Error", {}, str(msg))
        return Revert("Reverted", {}, "0x" + data.hex())
    name, types, names = entry
    try:
        values = abi_decode(types, data[4:]) if types else ()
    except Exception:
        return Revert(name, {}, "undecodable arguments 0x" + data[4:].hex())
    figures = {n: _figure(v) for n, v in zip(names, values, strict=True)}
    return Revert(name, figures, ", ".join(f"{n}={v}" for n, v in figures.items()))


def decode_revert(data: bytes) -> tuple[str, str]:
    """Return ``(error_name, detail)`` for revert ``data``; unknown data yields its hex."""
    revert = decode(data)
    return (revert.name, revert.detail)


def refusal(data: bytes, ledger: str = "") -> LedgerRejected:
    """The typed refusal for revert ``data``: its :class:`ErrorReason` and ABI figures.

    SECURITY: a name outside the closed set becomes ``UnknownRefusal`` (the raw name kept in
    the detail), so no caller branches on a string a node made up.
    """
    revert = decode(data)
    reason = ErrorReason.parse(revert.name)
    if reason is None:
        detail = f"{revert.name}: {revert.detail}" if revert.detail else revert.name
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, detail, ledger=ledger)
    return LedgerRejected(reason, revert.detail, revert.figures, ledger)
