"""SoftHSM2 for tests: a token in a temporary SOFTHSM2_CONF directory (never the system's).

A PKCS#11 module reads its configuration once per process (at ``C_Initialize``), so the
test process has one SoftHSM directory and one token (:func:`process_softhsm`); keys get
unique labels. Daemons started by a test get their own directory through :func:`make_softhsm`
and the ``SOFTHSM2_CONF`` in :meth:`SoftHsm.env`.
"""

from __future__ import annotations

import functools
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bridge.devnet.custody import SOFTHSM_MODULE as MODULE
from bridge.devnet.custody import init_token
from bridge.keys.reference import Pkcs11Key, SecretSource


@dataclass(frozen=True)
class SoftHsm:
    """One initialised SoftHSM2 token."""

    conf: Path
    token_label: str
    pin_file: Path

    def ref(self, key_label: str) -> Pkcs11Key:
        """A key reference to ``key_label`` in this token (PIN from the 0600 file)."""
        return Pkcs11Key(MODULE, self.token_label, key_label, SecretSource(file=self.pin_file))

    def env(self) -> dict[str, str]:
        """Environment for a process that uses this token."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    @property
    def pin(self) -> bytes:
        """The user PIN."""
        return self.pin_file.read_bytes().strip()


def make_softhsm(directory: Path, token_label: str = "kstb-test") -> SoftHsm:
    """Create a SoftHSM2 configuration and one initialised token under ``directory``."""
    if not MODULE.exists():
        raise RuntimeError(f"{MODULE} missing: run `make setup` (installs softhsm2)")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    return add_token(SoftHsm(conf, token_label, directory / f"{token_label}.pin"), token_label)


def add_token(hsm: SoftHsm, token_label: str) -> SoftHsm:
    """Initialise another token in ``hsm``'s directory (before any process loads the module)."""
    pin_file = hsm.conf.parent / f"{token_label}.pin"
    init_token(hsm.conf, token_label, pin_file)
    return SoftHsm(hsm.conf, token_label, pin_file)


@functools.cache
def process_softhsm() -> SoftHsm:
    """This test process's token (created, and SOFTHSM2_CONF set, on first use). A second
    token, ``kstb-other``, exists for tests that must fail a login (see :func:`other_token`)."""
    hsm = make_softhsm(Path(tempfile.mkdtemp(prefix="kstb-softhsm-")))
    add_token(hsm, "kstb-other")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    return hsm


def other_token() -> SoftHsm:
    """The process's second token (never logged into by the shared signers)."""
    hsm = process_softhsm()
    return SoftHsm(hsm.conf, "kstb-other", hsm.conf.parent / "kstb-other.pin")


def new_label(prefix: str) -> str:
    """A key label no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"
