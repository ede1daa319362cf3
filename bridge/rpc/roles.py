"""Roles and principals: who a caller is, as named by its certificate and the network file.

A role string is one of ``brokerage:<ledger>``, ``relayer:<ledger>``,
``member:<0x member address>``, ``coordinator``, ``depository``, ``supply-operator`` or
``bridge-operator``. A leaf certificate names its organisation in Subject O and exactly one
role string in Subject OU (like Fabric NodeOUs); CN is the component's name. This module is
pure: it parses strings and holds values, and never touches a certificate or a socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, parse_evm_address

BROKERAGE = "brokerage"
RELAYER = "relayer"
MEMBER = "member"
COORDINATOR = "coordinator"
DEPOSITORY = "depository"
SUPPLY_OPERATOR = "supply-operator"
BRIDGE_OPERATOR = "bridge-operator"

SCOPED_KINDS = (BROKERAGE, RELAYER, MEMBER)
"""Role kinds that carry a scope: a ledger id (brokerage, relayer) or a member address."""
UNSCOPED_KINDS = (COORDINATOR, DEPOSITORY, SUPPLY_OPERATOR, BRIDGE_OPERATOR)
ROLE_KINDS = SCOPED_KINDS + UNSCOPED_KINDS

_ORG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True, slots=True, order=True)
class Role:
    """A role kind and its scope (a ledger id, a ``0x`` member address, or empty).

    Guarantees: ``kind`` is one of :data:`ROLE_KINDS`; scoped kinds have a valid scope
    (a ledger id, or a lowercase ``0x`` + 40 hex member address); unscoped kinds none.
    """

    kind: str
    scope: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ROLE_KINDS:
            raise InvalidInput(f"unknown role {self.kind!r}")
        if self.kind in UNSCOPED_KINDS and self.scope:
            raise InvalidInput(f"role {self.kind!r} takes no scope")
        if self.kind in (BROKERAGE, RELAYER):
            LedgerId(self.scope)  # validates
        if self.kind == MEMBER and self.scope != "0x" + parse_evm_address(self.scope).hex():
            raise InvalidInput(f"member role needs a lowercase 0x address, got {self.scope!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.scope}" if self.scope else self.kind

    @property
    def server_name(self) -> str:
        """The DNS name a server holding this role carries in its certificate's SAN.

        Clients check it (``grpc.ssl_target_name_override``) so that a connection meant
        for, say, the coordinator cannot land on a relayer with a valid certificate.
        """
        if self.scope:
            return f"{self.scope}.{self.kind}.kstb-role"
        return f"{self.kind}.kstb-role"


def parse_role(text: str) -> Role:
    """Parse a role string; raises InvalidInput naming the problem."""
    kind, sep, scope = text.partition(":")
    if kind in SCOPED_KINDS and not sep:
        raise InvalidInput(f"role {text!r} needs a scope ({kind}:<...>)")
    if kind == MEMBER:
        try:
            scope = "0x" + parse_evm_address(scope).hex()
        except InvalidInput:
            raise InvalidInput(f"role {text!r}: not a member address") from None
    return Role(kind, scope)


def valid_org_id(org: str) -> str:
    """An organisation id: 1-63 lowercase letters, digits or '-'; raises InvalidInput."""
    if not _ORG_RE.fullmatch(org):
        raise InvalidInput(f"organisation id {org!r} must be 1-63 lowercase letters, digits, '-'")
    return org


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its organisation, its one role and the role's scope.

    Guarantees (when built by the transport layer): the certificate chained to ``org``'s
    CA, its Subject O was ``org``, its OU was ``role`` (with ``scope``) and the network file
    grants that role to ``org``; the certificate was neither expired nor revoked.
    """

    org: str
    role: str
    scope: str = ""
    common_name: str = ""
    fingerprint: str = ""
    """SHA-256 of the leaf certificate (DER), lowercase hex."""

    @property
    def role_value(self) -> Role:
        """The role as a value."""
        return Role(self.role, self.scope)

    @property
    def role_text(self) -> str:
        """The role string as the certificate's OU carries it (not re-validated)."""
        return f"{self.role}:{self.scope}" if self.scope else self.role

    def __str__(self) -> str:
        return f"{self.org}/{self.role_text}"
