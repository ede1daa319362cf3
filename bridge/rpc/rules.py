"""Who may call what: every RPC method of every bridge service, its roles and their scope.

This table is the single place where authorisation is decided; the interceptor
(:mod:`bridge.rpc.authz`) applies it to every call before any handler runs, and a unit
test fails when a method in ``proto/`` has no rule. A method without a rule is refused.

Scope checks that need only the request are made here (a brokerage submits only from its
own ledger; a relayer delivers only its own ledger's events). Reading one transfer needs
its ledgers: :data:`TransferLedgers` looks them up before the handler runs. Listing is
filtered in the store query by the handler (through :func:`bridge.rpc.authz.current_principal`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.rpc.roles import (
    BRIDGE_OPERATOR,
    BROKERAGE,
    COORDINATOR,
    DEPOSITORY,
    MEMBER,
    RELAYER,
    SUPPLY_OPERATOR,
    Principal,
)

ANY_AUTHENTICATED = "*"
"""A rule role meaning: any caller that authenticated (mTLS handshake and certificate)."""
DEVELOPMENT = "development"
"""The role of every caller when a server runs in development plaintext (allowed all)."""

TransferLedgers = Callable[[bytes], Awaitable[tuple[str, str] | None]]
"""Looks up a transfer's (source, target) ledgers; None when it does not exist."""

ScopeCheck = Callable[[Principal, Any, TransferLedgers | None], Awaitable[str | None]]
"""Returns why ``principal`` may not make this request, or None when it may."""


@dataclass(frozen=True, slots=True)
class Rule:
    """The roles that may call one method, and the scope check each call must pass."""

    roles: frozenset[str]
    scope: ScopeCheck | None = None


def _own_ledger_only(role: str, field: str, refusal: str) -> ScopeCheck:
    """A check that a ``role`` caller names only its own ledger (its certificate's scope) in
    the request's ``field``; other roles pass. ``refusal`` is formatted with ``scope`` and
    ``value``."""

    async def check(p: Principal, request: Any, _: TransferLedgers | None) -> str | None:
        if p.role == role:
            value = getattr(request, field)
            if value != p.scope:
                return refusal.format(scope=p.scope, value=value)
        return None

    return check


# SECURITY: a brokerage is the account manager of its own ledger only; it may not
# start a transfer that moves units held on another brokerage's ledger.
_submit_from_own_ledger = _own_ledger_only(
    BROKERAGE,
    "source_ledger",
    "brokerage:{scope} may submit only transfers whose source ledger is {scope}, not {value!r}",
)
# ---- batch API (ADR 0023)
# SECURITY: a brokerage watches only its own ledger's batches (batch ids are scoped per
# source ledger); an item of a batch naming another source ledger is refused per item by
# the handler (bridge.coordinator.batches.run_items).
_watch_own_batch = _own_ledger_only(
    BROKERAGE,
    "source_ledger",
    "brokerage:{scope} may watch only batches whose source ledger is {scope}, not {value!r}",
)
# SECURITY: the ledger comes from the relayer's certificate, never from the request.
_events_of_own_ledger = _own_ledger_only(
    RELAYER, "ledger_id", "relayer:{scope} may deliver events of ledger {scope} only, not {value!r}"
)


def _transfer_id(text: str) -> bytes | None:
    body = text.removeprefix("0x")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


async def _read_own_transfer(
    p: Principal, request: Any, lookup: TransferLedgers | None
) -> str | None:
    # SECURITY: a brokerage sees only transfers where its ledger is source or target
    # (client confidentiality). An unknown id is refused the same way, so ids are no oracle.
    if p.role != BROKERAGE:
        return None
    tid = _transfer_id(request.transfer_id)
    if tid is None:
        return None  # malformed: the handler answers INVALID_ARGUMENT and reveals nothing
    ledgers = await lookup(tid) if lookup is not None else None
    if ledgers is None or p.scope not in ledgers:
        return f"transfer {request.transfer_id} is not a transfer of brokerage:{p.scope}"
    return None


def _rule(*roles: str, scope: ScopeCheck | None = None) -> Rule:
    return Rule(frozenset(roles), scope)


_T = "/bridge.v1.TransferService/"
_E = "/bridge.v1.LedgerEventSink/"
_S = "/bridge.v1.SupplyService/"
_O = "/bridge.v1.OperatorService/"
_R = "/bridge.v1.RelayerService/"
_V = "/bridge.v1.VerifierService/"
_D = "/bridge.v1.DepositoryService/"  # ---- depository halt

_READERS = (BROKERAGE, DEPOSITORY, BRIDGE_OPERATOR)
_SUPPLY_READERS = (DEPOSITORY, SUPPLY_OPERATOR)

RULES: Mapping[str, Rule] = {
    # Brokerages: their own transfers. The depository (supervisor) and the bridge
    # operator read every transfer.
    _T + "SubmitTransfer": _rule(BROKERAGE, scope=_submit_from_own_ledger),
    _T + "GetTransfer": _rule(*_READERS, scope=_read_own_transfer),
    _T + "WatchTransfer": _rule(*_READERS, scope=_read_own_transfer),
    _T + "ListTransfers": _rule(*_READERS),  # brokerages: filtered in the store query
    # ---- batch API (ADR 0023): exactly SubmitTransfer's rule on the batch's source ledger.
    _T + "SubmitTransfers": _rule(BROKERAGE, scope=_submit_from_own_ledger),
    _T + "WatchBatch": _rule(*_READERS, scope=_watch_own_batch),
    # Relayers: their own ledger's events.
    _E + "DeliverEvents": _rule(RELAYER, scope=_events_of_own_ledger),
    # The depository reads the feed; the supply operator registers and releases.
    _S + "GetSupply": _rule(*_SUPPLY_READERS),
    _S + "StreamAttestations": _rule(*_SUPPLY_READERS),
    _S + "GetRegistration": _rule(*_SUPPLY_READERS),
    _S + "RegisterIssuance": _rule(SUPPLY_OPERATOR),
    _S + "ReleaseHold": _rule(SUPPLY_OPERATOR),
    # The bridge operator's console.
    _O + "ListStuckTransfers": _rule(BRIDGE_OPERATOR),
    _O + "RetryTransfer": _rule(BRIDGE_OPERATOR),
    _O + "AbortTransfer": _rule(BRIDGE_OPERATOR),
    _O + "ListMisbehaviour": _rule(BRIDGE_OPERATOR),
    _O + "GetFlowStatus": _rule(BRIDGE_OPERATOR),  # ---- flow limits: lanes and queues
    # ---- active/passive coordinators (ADR 0017): who leads and who stands by. The bridge
    # operator only: it names every coordinator's address, which others need not know.
    _O + "GetClusterStatus": _rule(BRIDGE_OPERATOR),
    # SECURITY: only the coordinator drives relayers and asks the committee to sign.
    _R + "GetLedgerInfo": _rule(COORDINATOR),
    _R + "GetLeg": _rule(COORDINATOR),
    _R + "GetLegs": _rule(COORDINATOR),  # ---- batch: many legs, the same reads as GetLeg
    _R + "GetHolder": _rule(COORDINATOR),
    _R + "GetHolders": _rule(COORDINATOR),  # ---- batch: many holders, GetHolder's reads
    _R + "Submit": _rule(COORDINATOR),
    # ---- batched ledger steps (ADR 0025): exactly Submit's rule.
    _R + "SubmitBatch": _rule(COORDINATOR),
    _R + "GetLedgerSupply": _rule(COORDINATOR),
    _R + "GetFlowStatus": _rule(COORDINATOR),  # ---- flow limits: what the queue reads
    _V + "GetIdentity": _rule(COORDINATOR),
    _V + "SignClaim": _rule(COORDINATOR),
    _V + "SignSupply": _rule(COORDINATOR),
    # ---- batched certificates (issue 14, ADR 0025): exactly SignClaim's rule.
    _V + "SignClaims": _rule(COORDINATOR),
    # ---- depository halt
    # SECURITY: only the depository submits halt orders (the ledgers check its signature
    # anyway; the rule keeps anyone else from filling the coordinator's order book), and
    # only the coordinator drives a relayer to apply one.
    _D + "SubmitHaltOrder": _rule(DEPOSITORY),
    _D + "GetHaltStatus": _rule(DEPOSITORY, BRIDGE_OPERATOR),
    _R + "ApplyOrder": _rule(COORDINATOR),
    _R + "GetHaltStatus": _rule(COORDINATOR),
    # Health and reflection reveal nothing beyond the public protos and liveness; any
    # caller with a valid certificate may use them (there is no way in without one).
    # ---- committee rotation (ADR 0009)
    # SECURITY: a member signs a new committee only when the bridge operator asks (the
    # coordinator, which relays everything else, cannot make the committee certify its own
    # keys); the coordinator only stores, tracks and installs what t members signed.
    _V + "SignRotation": _rule(BRIDGE_OPERATOR),
    _O + "ProposeRotation": _rule(BRIDGE_OPERATOR),
    _O + "CertifyRotation": _rule(BRIDGE_OPERATOR),
    _O + "GetRotation": _rule(BRIDGE_OPERATOR),
    _O + "ListRotations": _rule(BRIDGE_OPERATOR),
    # The installed epochs are public ledger state; installing needs a certificate the
    # ledger checks, so the operator may install by hand too.
    # review finding 4: the depository confirms the epoch chain here, not via the coordinator.
    _R + "GetCommittees": _rule(COORDINATOR, BRIDGE_OPERATOR, MEMBER, DEPOSITORY),
    _R + "InstallCommittee": _rule(COORDINATOR, BRIDGE_OPERATOR),
    _S + "GetCommitteeChain": _rule(*_SUPPLY_READERS),
    # ---- doctor (issue 12)
    # Build, clock, heights and epochs; to the bridge operator also the coordinator's
    # internal endpoints and each relayer's operator identity and gas balance, which the
    # depository (supervisor, another institution) is NOT told (bridge.doctor.status
    # .for_caller; permissioned ledgers' state is not public). Nothing calls it as the
    # coordinator (review findings 3, 9); brokerages, relayers and members are refused.
    "/bridge.v1.StatusService/GetStatus": _rule(BRIDGE_OPERATOR, DEPOSITORY),
    # ----
    "/grpc.health.v1.Health/Check": _rule(ANY_AUTHENTICATED),
    "/grpc.health.v1.Health/Watch": _rule(ANY_AUTHENTICATED),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _rule(ANY_AUTHENTICATED),
}


def rule_for(method: str) -> Rule | None:
    """The rule for a full method name (``/package.Service/Method``), or None (refused)."""
    return RULES.get(method)


def role_allowed(rule: Rule, principal: Principal) -> bool:
    """True when ``principal``'s role is one the rule admits."""
    if principal.role == DEVELOPMENT:
        return True
    return ANY_AUTHENTICATED in rule.roles or principal.role in rule.roles
