"""``bridge depository halt|release|set-key|status``: the depository's kill switch (ADR 0011).

``halt``/``release`` sign one order per ledger addressed (each bound to that ledger's
network and ledger words; ``--all-ledgers``: every ledger of ``--network``) with the
depository key (``--key-file`` on the devnet, ``--key-config`` for a keystore or HSM), and
submit each to the coordinator, which checks it against the key the ledger holds and
delivers it until the ledger applied it. ``status`` shows each ledger's halt flags as the
ledgers report them, and the orders recorded. Sequence numbers are the signing time in
microseconds (strictly increasing per depository clock), unless ``--sequence`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from bridge.cli import credentials
from bridge.config import load_network
from bridge.domain.errors import InvalidInput
from bridge.domain.governance import OrderAction, SignedOrder, make_order, sign_order
from bridge.domain.ids import SecurityId, parse_evm_address
from bridge.keys.loader import add_key_arguments, signer_from_arguments
from bridge.rpc.channels import sync_channel
from bridge.rpc.halt_convert import signed_order_to_pb
from bridge.v1 import depository_pb2, depository_pb2_grpc

STATE_NAMES = {
    v.number: v.name.removeprefix("ORDER_STATE_")
    for v in depository_pb2.DESCRIPTOR.enum_types_by_name["OrderState"].values
}


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``depository`` command group."""
    dep = top.add_parser("depository", help="halt or release a security (depository key)")
    sp = dep.add_subparsers(dest="cmd", required=True)
    for name, text in (("halt", "halt a security or a ledger"), ("release", "lift a halt")):
        c = sp.add_parser(name, help=text)
        _order_arguments(c)
        scope = c.add_mutually_exclusive_group(required=True)
        scope.add_argument("--security", metavar="ISIN")
        scope.add_argument("--all-securities", action="store_true", help="the whole ledger(s)")
    k = sp.add_parser("set-key", help="replace the depository key on the ledgers (signed by it)")
    _order_arguments(k)
    k.add_argument("--new-key", required=True, metavar="0xADDRESS")
    st = sp.add_parser("status", help="halts per ledger (read from the ledgers) and orders")
    st.add_argument("--security", metavar="ISIN", default="")


def _order_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--network", type=Path, required=True, help="the network file")
    add_key_arguments(c)
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--ledger", action="append", metavar="LEDGER", help="repeatable")
    where.add_argument("--all-ledgers", action="store_true")
    c.add_argument("--ttl", type=int, default=600, help="seconds the signed order is valid")
    c.add_argument("--sequence", type=int, default=0, help="default: now in microseconds")


def sign_orders(a: argparse.Namespace, action: OrderAction) -> list[SignedOrder]:
    """One signed order per ledger addressed (see the module docstring)."""
    network = load_network(a.network)
    names = sorted(network.ledgers) if a.all_ledgers else list(dict.fromkeys(a.ledger))
    unknown = [n for n in names if n not in network.ledgers]
    if unknown:
        raise InvalidInput(f"ledgers not in the network file: {', '.join(unknown)}")
    security = None
    if getattr(a, "security", None):
        security = SecurityId(a.security).word
    new_key = parse_evm_address(a.new_key) if action is OrderAction.SET_DEPOSITORY else None
    signer = signer_from_arguments(a)
    sequence = a.sequence or time.time_ns() // 1000
    expiry = int(time.time()) + a.ttl
    out = []
    for name in names:
        lc = network.ledgers[name]
        order = make_order(
            network=lc.network_word,
            ledger=lc.id.word,
            security=security,
            action=action,
            sequence=sequence,
            expiry=expiry,
            new_key=new_key,
        )
        out.append(sign_order(signer, order))
    return out


def _print(message: object, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True))  # type: ignore[arg-type]
    else:
        print(line)


def _status_line(s: depository_pb2.DepositoryOrderStatus) -> str:
    o = s.signed.order
    scope = o.security.rstrip(b"\0").decode("ascii", "replace") or "ALL SECURITIES"
    action = {1: "HALT", 2: "RELEASE", 3: "SET-KEY"}.get(o.action, str(o.action))
    extra = f" {s.refusal}" if s.refusal else ""
    return (
        f"{s.ledger_id:<16} seq {o.sequence:<18} {action:<8} {scope:<14}"
        f" {STATE_NAMES.get(s.state, '?')}{extra} {s.tx_id}"
    )


def run(a: argparse.Namespace) -> int:
    """Run one ``depository`` command; returns the exit code."""
    with sync_channel(a.coordinator, credentials.identity(a)) as channel:
        stub = depository_pb2_grpc.DepositoryServiceStub(channel)
        if a.cmd == "status":
            resp = stub.GetHaltStatus(
                depository_pb2.GetHaltStatusRequest(security_id=a.security), timeout=a.timeout
            )
            if a.json:
                _print(resp, True, "")
                return 0
            for h in resp.ledgers:
                if not h.read:
                    print(f"{h.ledger_id:<16} unreadable: {h.error}")
                    continue
                flags = [
                    *(["SECURITY HALTED"] if h.security_halted else []),
                    *(["LEDGER HALTED"] if h.ledger_halted else []),
                ]
                print(f"{h.ledger_id:<16} {', '.join(flags) or 'running'} (sequence {h.sequence})")
            for s in resp.orders:
                print("  " + _status_line(s))
            return 0
        action = {
            "halt": OrderAction.HALT,
            "release": OrderAction.RELEASE,
            "set-key": OrderAction.SET_DEPOSITORY,
        }[a.cmd]
        for signed in sign_orders(a, action):
            s = stub.SubmitHaltOrder(signed_order_to_pb(signed), timeout=a.timeout)
            _print(s, a.json, _status_line(s))
    return 0
