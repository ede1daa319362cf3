"""``bridge transfer|supply|operator|depository|doctor|store|config ...`` from a terminal.

Exit codes: 0 success, 1 the server refused (its status and message are printed),
2 usage errors, 3 a batch was recorded but some of its items were refused, 78 a
configuration file refused (``bridge config check``). ``--json``
prints machine-readable output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from bridge.cli import config_check, credentials
from bridge.cli import depository as depository_cli
from bridge.cli import doctor as doctor_cli
from bridge.cli import health as health_cli
from bridge.cli import operator as operator_cli
from bridge.cli import store as store_cli
from bridge.cli import supply as supply_cli
from bridge.config import NetworkConfig, load_network
from bridge.coordinator.requests import terms_for, validate_submit
from bridge.domain.errors import BridgeError
from bridge.instructions import Brokerage
from bridge.keys.loader import load_key_config, open_signer
from bridge.keys.reference import PlainKeyFile
from bridge.rpc.convert import instruction_from_pb
from bridge.rpc.errors import describe_rpc_error
from bridge.rpc.failover import SyncFailover, parse_targets, serving_target
from bridge.v1 import transfer_pb2, transfer_pb2_grpc
from bridge.version import add_version_argument

STATE_NAMES = {
    v.number: v.name.removeprefix("TRANSFER_STATE_")
    for v in transfer_pb2.DESCRIPTOR.enum_types_by_name["TransferState"].values
}


class _FailoverStub:
    """TransferService calls that fail over between the ``--coordinator`` addresses
    (ADR 0017). Every TransferService unary call is idempotent (reads; SubmitTransfer by
    its key), so each is retried on the next coordinator when one is down or a standby."""

    def __init__(self, failover: SyncFailover) -> None:
        self.failover = failover

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.failover.call(
                lambda ch: getattr(transfer_pb2_grpc.TransferServiceStub(ch), name)(*args, **kwargs)
            )

        return call


def _stub(a: argparse.Namespace) -> tuple[SyncFailover, _FailoverStub]:
    failover = SyncFailover(a.coordinator, credentials.identity(a), give_up_after=a.timeout)
    return failover, _FailoverStub(failover)


def _show(t: transfer_pb2.Transfer, as_json: bool) -> None:
    if as_json:
        print(json.dumps(MessageToDict(t, preserving_proto_field_name=True), sort_keys=True))
        return
    print(
        f"{t.transfer_id}  {STATE_NAMES.get(t.state, '?'):<15} {t.amount} {t.security_id}"
        f"  {t.source_ledger}:{t.sender} -> {t.target_ledger}:{t.recipient}"
    )
    if t.reason:
        print(f"    {t.reason}")
    for step, tx in sorted(t.transactions.items()):
        print(f"    {step:<8} {tx}")


def _submit(stub: Any, a: argparse.Namespace) -> None:
    request = transfer_pb2.SubmitTransferRequest(
        idempotency_key=a.idempotency_key or str(uuid.uuid4()),
        security_id=a.security,
        source_ledger=a.source,
        target_ledger=a.target,
        sender=a.sender,
        recipient=a.recipient,
        amount=a.amount,
    )
    # Protocol v2: this brokerage signs the instruction with its instruction key.
    # A plaintext key file only under the development flag (bridge.keys), like every key.
    ref = (
        load_key_config(a.instruction_key_config)
        if a.instruction_key_config is not None
        else PlainKeyFile(a.instruction_key)
    )
    signer = open_signer(ref)
    brokerage = Brokerage(load_network(a.network), {a.source: signer}, ttl=a.ttl)
    resp = stub.SubmitTransfer(brokerage.instruct(request), timeout=a.timeout)
    if not a.json:
        print("created" if resp.created else "already submitted with this idempotency key")
    _show(resp.transfer, a.json)


# ---- batch API (ADR 0023)
OUTCOME_NAMES = {
    v.number: v.name.removeprefix("BATCH_ITEM_OUTCOME_")
    for v in transfer_pb2.DESCRIPTOR.enum_types_by_name["BatchItemOutcome"].values
}
_ITEM_FIELDS = frozenset(
    {"security", "to", "sender", "recipient", "amount", "idempotency_key", "ttl"}
)


class SomeItemsRefused(Exception):
    """The batch was recorded, and at least one of its items was refused (exit code 3)."""


class AnswerMismatch(Exception):
    """---- batchfix (review s18 F8): the coordinator's answer names transfers other than
    the ones the brokerage signed (exit code 1: do not book it)."""


def _answer_mismatches(
    network: NetworkConfig,
    request: transfer_pb2.SubmitTransfersRequest,
    resp: transfer_pb2.SubmitTransfersResponse,
) -> list[str]:
    """Where the answer disagrees with the signed request. SECURITY: a coordinator (or a
    bug) cannot make the brokerage book another transfer: every item answered with a
    transfer must carry the id of exactly the terms this client signed for that item (the
    id commits to security, ledgers, sender, recipient, amount, nonce and deadline), and
    its displayed fields must be the item's."""
    bad = []
    if len(resp.results) != len(request.items) or resp.batch_id != request.batch_id:
        bad.append(f"{len(resp.results)} results for batch {resp.batch_id!r}, sent"
                   f" {len(request.items)} items as {request.batch_id!r}")  # fmt: skip
    for r in resp.results:
        if r.index >= len(request.items):
            bad.append(f"result for item {r.index}, which was not sent")
            continue
        item = request.items[r.index]
        if r.idempotency_key != item.idempotency_key:
            bad.append(f"item {r.index}: answered for key {r.idempotency_key!r}")
        if not r.HasField("transfer"):
            continue
        try:
            req = validate_submit(network, item)
            want = "0x" + terms_for(network, req, instruction_from_pb(item)).transfer_id.hex()
        except BridgeError:
            bad.append(f"item {r.index}: a transfer for an item this client did not sign")
            continue
        t = r.transfer
        if t.transfer_id.lower() != want:
            bad.append(f"item {r.index}: transfer {t.transfer_id} is not the signed {want}")
        shown = (t.security_id, t.source_ledger, t.target_ledger, t.amount)
        if shown != (req.security, req.source_ledger, req.target_ledger, str(req.amount)) or (
            t.sender.lower(),
            t.recipient.lower(),
        ) != (req.sender.lower(), req.recipient.lower()):
            bad.append(f"item {r.index}: the transfer's fields are not the item's")
    return bad


def _default_key(batch_id: str, line: int) -> str:
    """---- batchfix (review s18 F7): the key of a line without one, the same at every run
    of the same file under the same batch id (a fresh UUID made a rerun a second transfer)."""
    return f"b{hashlib.sha256(batch_id.encode()).hexdigest()[:24]}-{line}"


def _batch_items(
    path: Path, source: str, batch_id: str
) -> list[transfer_pb2.SubmitTransferRequest]:
    """The items of a JSON-lines file: one object per line with ``security``, ``to``,
    ``sender``, ``recipient``, ``amount`` and optionally ``idempotency_key`` (default:
    derived from the batch id and the line number, so a rerun names the same transfers);
    blank lines are skipped. ValueError names the bad line."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        unknown = sorted(set(entry) - _ITEM_FIELDS)
        if unknown:
            raise ValueError(f"{path}:{number}: unknown field(s) {', '.join(unknown)}")
        items.append(
            transfer_pb2.SubmitTransferRequest(
                idempotency_key=str(entry.get("idempotency_key") or _default_key(batch_id, number)),
                security_id=str(entry.get("security", "")),
                source_ledger=source,
                target_ledger=str(entry.get("to", "")),
                sender=str(entry.get("sender", "")),
                recipient=str(entry.get("recipient", "")),
                amount=str(entry.get("amount", "")),
            )
        )
    return items


def _sent_file(a: argparse.Namespace) -> Path:
    """Where the signed batch is kept between runs: beside the input file (or in
    ``--state-dir``), named by the file and a digest of the batch id."""
    digest = hashlib.sha256(a.batch_id.encode()).hexdigest()[:16]
    base: Path = a.state_dir or a.file.parent
    return base / f"{a.file.name}.{digest}.sent.pb"


def _unsigned(item: transfer_pb2.SubmitTransferRequest) -> bytes:
    bare = transfer_pb2.SubmitTransferRequest()
    bare.CopyFrom(item)
    bare.ClearField("instruction")
    return bare.SerializeToString(deterministic=True)


def _batch_request(a: argparse.Namespace) -> transfer_pb2.SubmitTransfersRequest:
    """The signed batch to send. SECURITY (review s18 F7): a batch is replayed only with
    identical bytes (ADR 0023), and every run would draw new nonces and deadlines; so the
    signed request is written (0600) before it is first sent and re-sent as it is by a
    rerun under the same batch id, after checking the file still lists the same items."""
    items = _batch_items(a.file, a.source, a.batch_id)
    sent = _sent_file(a)
    if sent.exists():
        request = transfer_pb2.SubmitTransfersRequest.FromString(sent.read_bytes())
        if (
            request.batch_id != a.batch_id
            or request.source_ledger != a.source
            or [_unsigned(i) for i in request.items] != [_unsigned(i) for i in items]
        ):
            raise ValueError(
                f"{a.file} no longer lists what batch {a.batch_id} sent ({sent}); use a new"
                " --batch-id for other items"
            )
        return request
    ref = (
        load_key_config(a.instruction_key_config)
        if a.instruction_key_config is not None
        else PlainKeyFile(a.instruction_key)
    )
    brokerage = Brokerage(load_network(a.network), {a.source: open_signer(ref)}, ttl=a.ttl)
    signed = []
    for item in items:
        try:
            signed.append(brokerage.instruct(item))
        except BridgeError:
            # Malformed: sent as it is, so the coordinator refuses it in its own result.
            signed.append(item)
    request = transfer_pb2.SubmitTransfersRequest(
        batch_id=a.batch_id, source_ledger=a.source, items=signed
    )
    sent.parent.mkdir(parents=True, exist_ok=True)
    partial = sent.with_name(sent.name + ".tmp")
    partial.write_bytes(request.SerializeToString(deterministic=True))
    partial.chmod(0o600)
    partial.replace(sent)
    return request


def _submit_batch(stub: Any, a: argparse.Namespace) -> None:
    request = _batch_request(a)
    # Items run one after the other on the coordinator: give the call time for them.
    resp = stub.SubmitTransfers(request, timeout=max(a.timeout, 0.5 * len(request.items)))
    wrong = _answer_mismatches(load_network(a.network), request, resp)
    if wrong:
        raise AnswerMismatch(
            "the coordinator's answer does not match the signed batch: " + "; ".join(wrong[:5])
        )
    refused = retryable = 0
    if not a.json:
        print(f"batch {resp.batch_id}: " + ("recorded" if resp.created else "already recorded"))
    for r in resp.results:
        refused += r.outcome == transfer_pb2.BATCH_ITEM_OUTCOME_REFUSED
        retryable += r.outcome == transfer_pb2.BATCH_ITEM_OUTCOME_RETRYABLE  # ---- batchfix
        if a.json:
            row = MessageToDict(r, preserving_proto_field_name=True)
            print(json.dumps({"batch_id": resp.batch_id, **row}, sort_keys=True))
            continue
        outcome = OUTCOME_NAMES.get(r.outcome, "?")
        if r.HasField("error"):
            print(f"{r.index:>5} {r.idempotency_key}  {outcome}  {r.error.code} {r.error.reason}")
            print(f"      {r.error.message}")
        else:
            t = r.transfer
            state = STATE_NAMES.get(t.state, "?")
            print(f"{r.index:>5} {r.idempotency_key}  {outcome}  {t.transfer_id} {state}")
    if retryable:
        raise SomeItemsRefused(
            f"{refused} of {len(resp.results)} items refused, {retryable} retryable (a replay"
            f" of this exact request, batch {resp.batch_id}, re-evaluates those)"
        )
    if refused:
        raise SomeItemsRefused(f"{refused} of {len(resp.results)} items refused")


def _get(stub: Any, a: argparse.Namespace) -> None:
    _show(
        stub.GetTransfer(
            transfer_pb2.GetTransferRequest(transfer_id=a.transfer_id), timeout=a.timeout
        ),
        a.json,
    )


def _list(stub: Any, a: argparse.Namespace) -> None:
    state = transfer_pb2.TRANSFER_STATE_UNSPECIFIED
    if a.state:
        key = "TRANSFER_STATE_" + a.state.upper()
        state = transfer_pb2.TransferState.Value(key)
    token = ""
    while True:
        resp = stub.ListTransfers(
            transfer_pb2.ListTransfersRequest(
                state=state, security_id=a.security or "", page_size=a.page_size, page_token=token
            ),
            timeout=a.timeout,
        )
        for t in resp.transfers:
            _show(t, a.json)
        token = resp.next_page_token
        if not token or not a.all:
            break


def _watch(stub: Any, a: argparse.Namespace) -> None:
    last = 0  # resumes after the last update shown, on whichever coordinator leads

    def follow(channel: grpc.Channel, progressed: Callable[[], None]) -> None:
        nonlocal last
        watch = transfer_pb2_grpc.TransferServiceStub(channel).WatchTransfer(
            transfer_pb2.WatchTransferRequest(transfer_id=a.transfer_id, after_sequence=last)
        )
        for u in watch:
            last = u.sequence
            progressed()  # --timeout counts from the last update, not the watch's start
            if a.json:
                print(
                    json.dumps(MessageToDict(u, preserving_proto_field_name=True), sort_keys=True)
                )
            else:
                at = u.at.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
                print(f"{u.sequence:>3} {at} {STATE_NAMES.get(u.state, '?'):<15} {u.detail}")
            sys.stdout.flush()

    stub.failover.follow(follow)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="bridge", description=__doc__)
    add_version_argument(p)
    p.add_argument(
        "--coordinator",
        default="127.0.0.1:50051",
        help="host:port of the coordinator; several comma-separated (active/passive"
        " coordinators): calls go to the leader and fail over",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds per call; with several coordinators, how long to keep failing over"
        " (for watch: since the last update received)",
    )
    p.add_argument("--json", action="store_true")
    credentials.add_arguments(p)
    top = p.add_subparsers(dest="group", required=True)
    tr = top.add_parser("transfer", help="submit and follow transfers").add_subparsers(
        dest="cmd", required=True
    )
    s = tr.add_parser("submit", help="move units to another ledger")
    s.add_argument("--security", required=True, help="ISIN")
    s.add_argument("--from", dest="source", required=True, help="source ledger id")
    s.add_argument("--to", dest="target", required=True, help="target ledger id")
    s.add_argument("--sender", required=True)
    s.add_argument("--recipient", required=True)
    s.add_argument("--amount", required=True)
    s.add_argument("--idempotency-key", help="default: a fresh UUID")
    key = s.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--instruction-key",
        type=Path,
        help="0600 key file of this brokerage's instruction key (registered for --from)",
    )
    key.add_argument(
        "--instruction-key-config",
        type=Path,
        help="TOML file with key_file or a [key] table: the instruction key in a keystore/HSM",
    )
    s.add_argument("--network", type=Path, required=True, help="the network file (network.toml)")
    s.add_argument("--ttl", type=int, default=60, help="seconds until the transfer's deadline")
    s.set_defaults(run=_submit)
    b = tr.add_parser(  # ---- batch API (ADR 0023)
        "submit-batch",
        help="submit many transfers from one ledger, one JSON object per line; each item"
        " gets its own result (exit 3 when some were refused)",
    )
    b.add_argument(
        "file",
        type=Path,
        help="JSON lines: security, to, sender, recipient, amount, idempotency_key (optional)",
    )
    b.add_argument("--from", dest="source", required=True, help="source ledger id")
    b.add_argument(
        "--batch-id",
        required=True,
        help="the batch's idempotency key; running the same file again with it re-sends the"
        " same signed batch (kept beside the file) and prints the recorded results",
    )
    b.add_argument(
        "--state-dir",
        type=Path,
        help="where the signed batch is kept between runs (default: the file's directory)",
    )
    bkey = b.add_mutually_exclusive_group(required=True)
    bkey.add_argument("--instruction-key", type=Path, help="as for submit")
    bkey.add_argument("--instruction-key-config", type=Path, help="as for submit")
    b.add_argument("--network", type=Path, required=True, help="the network file (network.toml)")
    b.add_argument("--ttl", type=int, default=60, help="seconds until each item's deadline")
    b.set_defaults(run=_submit_batch)
    g = tr.add_parser("get", help="show one transfer")
    g.add_argument("transfer_id")
    g.set_defaults(run=_get)
    ls = tr.add_parser("list", help="list transfers")
    ls.add_argument("--state", help="e.g. committed, aborted, submitted")
    ls.add_argument("--security")
    ls.add_argument("--page-size", type=int, default=100)
    ls.add_argument("--all", action="store_true", help="follow every page")
    ls.set_defaults(run=_list)
    w = tr.add_parser("watch", help="stream a transfer's state changes until terminal")
    w.add_argument("transfer_id")
    w.set_defaults(run=_watch)
    supply_cli.add_parser(top)
    operator_cli.add_parser(top)
    depository_cli.add_parser(top)  # ---- depository halt
    store_cli.add_parser(top)  # ---- stores (ADR 0022)
    doctor_cli.add_parser(top)  # ---- doctor (issue 12)
    config_check.add_parser(top)  # ---- strict configuration (issue 12)
    health_cli.add_parser(top)  # ---- packaging: the supervisor's probe (ADR 0021)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    if args.group == "health":  # ---- packaging: the supervisor's probe (ADR 0021)
        return health_cli.run(args)
    if args.group == "config":  # ---- strict configuration (issue 12): offline, no channel
        return config_check.run(args)
    if args.group == "store":  # ---- stores (ADR 0022): local, no coordinator
        return store_cli.run(args)
    if args.group in ("supply", "operator", "depository", "doctor"):
        try:  # several coordinators: the one whose health is SERVING (the leader)
            args.coordinators = parse_targets(args.coordinator)  # streams fail over
            args.coordinator = serving_target(
                parse_targets(args.coordinator), credentials.identity(args), args.timeout
            )
        except (OSError, BridgeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.group in ("supply", "operator", "depository", "doctor"):
        runners = {"supply": supply_cli.run, "operator": operator_cli.run}
        runners["depository"] = depository_cli.run  # ---- depository halt
        runners["doctor"] = doctor_cli.run  # ---- doctor (issue 12)
        try:
            return runners[args.group](args)
        except grpc.RpcError as exc:
            print(f"error: {describe_rpc_error(exc)}", file=sys.stderr)
            return 1
        except (ValueError, BridgeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        channel, stub = _stub(args)
    except (OSError, BridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.run(stub, args)
    except SomeItemsRefused as exc:  # ---- batch API (ADR 0023)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except AnswerMismatch as exc:  # ---- batchfix
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"error: {describe_rpc_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, BridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
