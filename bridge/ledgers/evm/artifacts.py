"""Compiled contract artifacts (ABI and creation bytecode) from ``contracts/evm/artifacts``.

The artifacts are committed and produced by ``python -m bridge.tools.build_contracts``;
the unit test ``tests/unit/test_contract_artifacts.py`` guarantees they match the sources.
An installed wheel carries a copy in ``bridge/ledgers/evm/_artifacts`` (setup.py, ADR 0021),
which is read when present; a source checkout reads ``contracts/evm/artifacts``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGED = Path(__file__).resolve().parent / "_artifacts"
ARTIFACTS_DIR = (
    _PACKAGED
    if _PACKAGED.is_dir()
    else Path(__file__).resolve().parents[3] / "contracts" / "evm" / "artifacts"
)
CONTRACT_NAMES = ("BridgeEndpoint", "SecurityToken", "BridgeLens")


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract: its name, ABI, creation bytecode and compiler description."""

    contract_name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: bytes
    compiler: dict[str, Any]


@cache
def load_artifact(name: str) -> Artifact:
    """Load (once per process) the artifact of contract ``name``.

    Raises FileNotFoundError when the artifact was never built, ValueError when it is not
    the artifact of ``name`` or has no bytecode.
    """
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}; expected one of {CONTRACT_NAMES}")
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m bridge.tools.build_contracts`")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("contractName") != name:
        raise ValueError(f"{path} holds {raw.get('contractName')!r}, not {name!r}")
    code = str(raw["bytecode"])
    if not code.startswith("0x") or len(code) <= 2:
        raise ValueError(f"{path} has no creation bytecode")
    return Artifact(
        contract_name=name,
        abi=tuple(raw["abi"]),
        bytecode=bytes.fromhex(code[2:]),
        compiler=dict(raw["compiler"]),
    )


def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of contract ``name`` (a fresh copy: callers may mutate it)."""
    return copy.deepcopy(list(load_artifact(name).abi))


def load_bytecode(name: str) -> bytes:
    """The creation bytecode of contract ``name``."""
    return load_artifact(name).bytecode
