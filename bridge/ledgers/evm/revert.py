"""Decode EVM revert data into the contracts' custom error names and arguments."""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode

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


def decode_revert(data: bytes) -> tuple[str, str]:
    """Return ``(error_name, detail)`` for revert ``data``; unknown data yields its hex."""
    if len(data) < 4:
        return ("Reverted", "no revert data")
    entry = _error_table().get(data[:4])
    if entry is None:
        if data[:4] == bytes.fromhex("08c379a0"):
            (msg,) = abi_decode(["string"], data[4:])
            return ("Error", str(msg))
        return ("Reverted", "0x" + data.hex())
    name, types, names = entry
    values = abi_decode(types, data[4:]) if types else ()
    parts = []
    for n, v in zip(names, values, strict=True):
        shown = "0x" + v.hex() if isinstance(v, bytes) else str(v)
        parts.append(f"{n}={shown}")
    return (name, ", ".join(parts))
