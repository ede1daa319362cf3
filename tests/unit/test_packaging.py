"""The production wheel holds no devnet, demo or generator code, and nothing in it imports them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

pytestmark = [pytest.mark.unit, pytest.mark.conformance]

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = ("bridge.devnet", "bridge.tools")


def _packages() -> list[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    find = find["find"]
    return find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))


def test_dev_packages_are_not_shipped() -> None:
    shipped = _packages()
    assert "bridge.ledgers" in shipped and "relayers" in shipped
    assert not [p for p in shipped if p.startswith(DEV_ONLY)]


def test_shipped_modules_do_not_import_dev_packages() -> None:
    offenders = []
    for package in _packages():
        for path in (ROOT / package.replace(".", "/")).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(DEV_ONLY)
                ]
    assert offenders == []
