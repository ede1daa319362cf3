"""``bridge operator stuck|retry|abort|misbehaviour|limits|rotation|status``: the operator's
tools.

``abort`` never moves units around the protocol: it starts a committee-certified ABORT
where the ledgers allow one, and otherwise prints why not (exit code 1).
"""

from __future__ import annotations

import argparse
import json

from google.protobuf.json_format import MessageToDict

from bridge.cli import credentials
from bridge.cli import rotation as rotation_cli
from bridge.rpc.channels import sync_channel
from bridge.v1 import flow_pb2, operator_pb2, operator_pb2_grpc, transfer_pb2

STATE_NAMES = {
    v.number: v.name.removeprefix("TRANSFER_STATE_")
    for v in transfer_pb2.DESCRIPTOR.enum_types_by_name["TransferState"].values
}


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``operator`` command group."""
    op = top.add_parser("operator", help="stuck transfers, retry, abort, evidence, limits")
    sp = op.add_subparsers(dest="cmd", required=True)
    st = sp.add_parser("stuck", help="unfinished transfers older than --min-age, with reasons")
    st.add_argument("--min-age", type=int, default=60, help="seconds since submission (60)")
    st.add_argument("--limit", type=int, default=100)
    commands = (
        ("retry", "re-run a transfer's next step now"),
        ("abort", "abort through a certified ABORT (if the ledgers allow)"),
    )
    for name, text in commands:
        c = sp.add_parser(name, help=text)
        c.add_argument("transfer_id")
    m = sp.add_parser("misbehaviour", help="committee members caught misbehaving")
    m.add_argument("--limit", type=int, default=100)
    lim = sp.add_parser("limits", help="flow limits per lane: capacity, available, queued")
    lim.add_argument("security_id", help="ISIN")
    rotation_cli.add_parser(sp)
    # ---- active/passive coordinators (ADR 0017)
    sp.add_parser("status", help="the leading coordinator, its lease and every standby")


def _print(message: object, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True))  # type: ignore[arg-type]
    else:
        print(line)


def _transfer_line(t: transfer_pb2.Transfer) -> str:
    created = t.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{t.transfer_id}  {STATE_NAMES.get(t.state, '?'):<15} created {created}"
        f"  {t.amount} {t.security_id} {t.source_ledger} -> {t.target_ledger}\n    {t.reason}"
    )


# ---- flow limits (ADR 0010)
def _bucket_text(b: flow_pb2.FlowBucket) -> str:
    if b.capacity in ("", "0"):
        return "unlimited"
    return f"{b.available}/{b.capacity} available, refills {b.capacity} per {b.window_seconds} s"


def _lane_line(lane: flow_pb2.LaneFlow) -> str:
    head = f"{lane.security_id} {lane.source_ledger} -> {lane.target_ledger}"
    if lane.error:
        return f"{head}\n    cannot read: {lane.error}"
    queued = f"{lane.queued} queued ({lane.queued_units or '0'} units)"
    if lane.HasField("oldest_queued_at"):
        oldest = lane.oldest_queued_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        queued += f", oldest submitted {oldest}"
    s, t = lane.source, lane.target
    delay = ""
    if s.large_threshold not in ("", "0"):
        delay = (
            f"\n    large transfers on {lane.source_ledger}: above {s.large_threshold} per"
            f" {s.large_delay_seconds} s wait {s.large_delay_seconds} s"
        )
    return (
        f"{head}: {queued}\n    outbound on {lane.source_ledger}: {_bucket_text(s.outbound)}"
        f"\n    inbound on {lane.target_ledger}: {_bucket_text(t.inbound)}{delay}"
    )


# ---- active/passive coordinators (ADR 0017)
def _cluster_text(s: operator_pb2.GetClusterStatusResponse) -> str:
    if not s.members:
        return f"single coordinator (no lease): {s.answered_by}"
    lines = [
        f"leader: {s.leader} at {s.leader_address}, token {s.token},"
        f" lease expires in {s.expires_in_seconds:.1f} s"
        if s.leader
        else f"no leader (last token {s.token}, expired {-s.expires_in_seconds:.1f} s ago)"
    ]
    for m in s.members:
        role = "leader " if m.leader else "standby"
        lines.append(f"  {role} {m.name:<16} {m.address:<24} seen {m.seen_seconds_ago:.1f} s ago")
    lines.append(f"answered by {s.answered_by} ({'leader' if s.answered_by_leader else 'standby'})")
    return "\n".join(lines)


def run(a: argparse.Namespace) -> int:
    """Run one ``operator`` command; returns the exit code."""
    with sync_channel(a.coordinator, credentials.identity(a)) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        if a.cmd == "rotation":
            return rotation_cli.run(a, stub)
        if a.cmd == "status":  # ---- active/passive coordinators (ADR 0017)
            status = stub.GetClusterStatus(
                operator_pb2.GetClusterStatusRequest(), timeout=a.timeout
            )
            _print(status, a.json, _cluster_text(status))
            return 0
        if a.cmd == "stuck":
            resp = stub.ListStuckTransfers(
                operator_pb2.ListStuckTransfersRequest(min_age_seconds=a.min_age, limit=a.limit),
                timeout=a.timeout,
            )
            for t in resp.transfers:
                _print(t, a.json, _transfer_line(t))
            if not a.json:
                print(f"{len(resp.transfers)} unfinished transfers older than {a.min_age} s")
        elif a.cmd == "retry":
            t = stub.RetryTransfer(
                operator_pb2.RetryTransferRequest(transfer_id=a.transfer_id), timeout=a.timeout
            )
            _print(t, a.json, "retry started\n" + _transfer_line(t))
        elif a.cmd == "abort":
            t = stub.AbortTransfer(
                operator_pb2.AbortTransferRequest(transfer_id=a.transfer_id), timeout=a.timeout
            )
            _print(t, a.json, "abort started\n" + _transfer_line(t))
        elif a.cmd == "limits":
            lanes = stub.GetFlowStatus(
                flow_pb2.GetFlowStatusRequest(security_id=a.security_id), timeout=a.timeout
            ).lanes
            for lane in lanes:
                _print(lane, a.json, _lane_line(lane))
        else:
            incidents = stub.ListMisbehaviour(
                operator_pb2.ListMisbehaviourRequest(limit=a.limit), timeout=a.timeout
            ).incidents
            for i in incidents:
                at = i.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                _print(
                    i,
                    a.json,
                    f"{at}  member 0x{i.member.hex()} at {i.endpoint}: {i.kind} ({i.subject})"
                    f"\n    {i.detail}\n    expected digest 0x{i.expected_digest.hex()}"
                    f"\n    signed digest   0x{i.signed_digest.hex()}"
                    f"\n    signature       0x{i.signature.hex()}",
                )
    return 0
