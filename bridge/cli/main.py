"""``bridge transfer|supply|operator|depository|doctor|store|config ...`` from a terminal.

Exit codes: 0 success, 1 the server refused (its status and message are printed),
2 usage errors (and a batch id or key journaled for another input), 3 a batch was
recorded but some of its items were refused, 4 the coordinator answered a transfer other
than the one signed (do not book it), 5 a submission to run again later (``transfer
submit`` or ``submit-batch`` timed out, found the coordinator unavailable or at a bound,
or some batch items are retryable), 78 a configuration file refused (``bridge config
check``). ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from bridge.cli import config_check, credentials, journal
from bridge.cli import depository as depository_cli
from bridge.cli import doctor as doctor_cli
from bridge.cli import health as health_cli
from bridge.cli import operator as operator_cli
from bridge.cli import store as store_cli
from bridge.cli import supply as supply_cli
from bridge.cli.answers import AnswerMismatch, check_batch, check_transfer, expected_of
from bridge.config import load_network
from bridge.domain.errors import BridgeError, Conflict, InvalidInput
from bridge.instructions import Brokerage
from bridge.keys.loader import load_key_config, open_signer
from bridge.keys.reference import PlainKeyFile
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


def _instruction_signer(a: argparse.Namespace) -> Any:
    ref = (
        load_key_config(a.instruction_key_config)
        if a.instruction_key_config is not None
        else PlainKeyFile(a.instruction_key)
    )
    return open_signer(ref)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _submit(stub: Any, a: argparse.Namespace) -> None:
    fields = {
        "security": a.security,
        "from": a.source,
        "to": a.target,
        "sender": a.sender,
        "recipient": a.recipient,
        "amount": a.amount,
    }
    key = a.idempotency_key or journal.derived_submit_key(fields)
    if not a.idempotency_key:
        _note(f"idempotency key derived from the request: {key} (the same command is the same"
              " order; a second identical transfer needs its own --idempotency-key)")  # fmt: skip
    network = load_network(a.network)
    path = a.journal or journal.default_submit_path(a.source, key)
    digest = journal.request_fields_hash({**fields, "idempotency_key": key})
    request = transfer_pb2.SubmitTransferRequest(
        idempotency_key=key,
        security_id=a.security,
        source_ledger=a.source,
        target_ledger=a.target,
        sender=a.sender,
        recipient=a.recipient,
        amount=a.amount,
    )
    found = journal.load(path)
    if found is None:
        # Protocol v2: this brokerage signs the instruction with its instruction key.
        # A plaintext key file only under the development flag (bridge.keys), like every key.
        brokerage = Brokerage(network, {a.source: _instruction_signer(a)}, ttl=a.ttl)
        signed = brokerage.instruct(request)
        entry = journal.Journal(
            path, "submit", a.source, key, digest, int(time.time()), journal.serialise(signed)
        )
        if not journal.create(entry):  # another run journaled it first: resend that one
            found = journal.load(path)
            if found is None:  # never send what is not journaled
                raise InvalidInput(f"journal {path} vanished while this run read it: run again")
    if found is not None:
        found.check("submit", a.source, key, digest)
        signed = found.single()
        unsigned = transfer_pb2.SubmitTransferRequest()
        unsigned.CopyFrom(signed)
        unsigned.ClearField("instruction")
        if unsigned != request:  # SECURITY: a tampered journal
            raise Conflict(f"journal {path} does not hold this request: refused")
        _note(f"resending the request journaled in {path} (same nonce and deadline)")
    else:
        _note(f"journal: {path}")
    expected = expected_of(network, signed)
    resp = stub.SubmitTransfer(signed, timeout=a.timeout)
    check_transfer(expected, resp.transfer, f"transfer {key}")
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


_RETRY_HINTS: dict[grpc.StatusCode | None, str] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "the request may be partly recorded: run the same"
    " command again (it resends the journaled request; nothing moves twice)",
    grpc.StatusCode.UNAVAILABLE: "the request may be partly recorded: run the same command"
    " again (it resends the journaled request; nothing moves twice)",
    grpc.StatusCode.ALREADY_EXISTS: "this batch id or key is recorded with another request"
    " (not the journaled one): nothing was submitted now; use a new batch id or key",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "nothing was recorded now: the coordinator holds"
    " your ledger to a bound (unfinished transfers, running batches); run the same command"
    " again once some have finished",
    None: "rerunning the same command resends the same journaled request",
}
_RUN_AGAIN = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""A submission's errors after which the same command is to be run again (exit 5)."""


class SomeItemsRefused(Exception):
    """The batch was recorded, and at least one of its items was refused (exit code 3)."""


class SomeItemsPending(Exception):
    """The batch was recorded, and at least one of its items is RETRYABLE (nothing recorded
    for it, for a transient reason) or recorded but not readable now: running the same
    command again later re-evaluates or re-reads those items only (exit code 5)."""


def _batch_items(
    path: Path, data: bytes, source: str, batch_id: str
) -> tuple[list[transfer_pb2.SubmitTransferRequest], tuple[int, ...]]:
    """The items of a JSON-lines file (its bytes ``data``): one object per line with
    ``security``, ``to``, ``sender``, ``recipient``, ``amount`` and optionally
    ``idempotency_key``; blank lines are skipped. A line without a key gets
    :func:`journal.derived_key` (the same on every run of this file under this batch id);
    their indices are returned too. ValueError names the bad line."""
    items: list[transfer_pb2.SubmitTransferRequest] = []
    derived: list[int] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
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
        key = entry.get("idempotency_key")
        if not key:
            key = journal.derived_key(batch_id, source, len(items), entry)
            derived.append(len(items))
        items.append(
            transfer_pb2.SubmitTransferRequest(
                idempotency_key=str(key),
                security_id=str(entry.get("security", "")),
                source_ledger=source,
                target_ledger=str(entry.get("to", "")),
                sender=str(entry.get("sender", "")),
                recipient=str(entry.get("recipient", "")),
                amount=str(entry.get("amount", "")),
            )
        )
    return items, tuple(derived)


def _journaled_batch(
    a: argparse.Namespace, network: Any
) -> tuple[transfer_pb2.SubmitTransfersRequest, tuple[int, ...]]:
    """The signed batch to send: the journaled one when this batch id was journaled from
    this same file (a retry resends identical bytes), else signed now and journaled before
    it is sent. Conflict when the batch id was journaled for another input."""
    data = a.file.read_bytes()
    digest = journal.input_hash(data)
    items, derived = _batch_items(a.file, data, a.source, a.batch_id)
    path = a.journal or journal.default_batch_path(a.file, a.source, a.batch_id)
    found = journal.load(path)
    if found is None:
        brokerage = Brokerage(network, {a.source: _instruction_signer(a)}, ttl=a.ttl)
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
        entry = journal.Journal(
            path, "submit-batch", a.source, a.batch_id, digest, int(time.time()),
            journal.serialise(request), derived,
        )  # fmt: skip
        if journal.create(entry):
            _note(f"journal: {path}")
            return request, derived
        found = journal.load(path)  # another run journaled it first: resend that one
        if found is None:
            raise InvalidInput(f"journal {path} vanished while this run read it: run again")
    found.check("submit-batch", a.source, a.batch_id, digest)
    request = found.batch()
    unsigned = []
    for item in request.items:
        copy = transfer_pb2.SubmitTransferRequest()
        copy.CopyFrom(item)
        copy.ClearField("instruction")
        unsigned.append(copy)
    if request.batch_id != a.batch_id or unsigned != items:  # SECURITY: a tampered journal
        raise Conflict(f"journal {path} does not hold the items of {a.file}: refused")
    _note(f"resending the batch journaled in {path} (same nonces and deadlines)")
    if any(
        i.HasField("instruction") and i.instruction.deadline < time.time() for i in request.items
    ):
        _note("the journaled deadlines have passed: items the coordinator recorded are answered"
              " as recorded, items it never recorded are refused (deadline passed)")  # fmt: skip
    return request, derived


def _submit_batch(stub: Any, a: argparse.Namespace) -> None:
    network = load_network(a.network)
    request, derived = _journaled_batch(a, network)
    for index in derived:
        _note(
            f"item {index}: no idempotency_key in the file,"
            f" derived {request.items[index].idempotency_key}"
        )
    expected = [expected_of(network, item) for item in request.items]
    resp = stub.SubmitTransfers(request, timeout=a.timeout)
    check_batch(expected, [i.idempotency_key for i in request.items], resp, request.batch_id)
    refused = pending = 0
    if not a.json:
        print(f"batch {resp.batch_id}: " + ("recorded" if resp.created else "already recorded"))
    for r in resp.results:
        refused += r.outcome == transfer_pb2.BATCH_ITEM_OUTCOME_REFUSED
        pending += r.outcome == transfer_pb2.BATCH_ITEM_OUTCOME_RETRYABLE or (
            r.HasField("error") and r.outcome != transfer_pb2.BATCH_ITEM_OUTCOME_REFUSED
        )
        if a.json:
            row = MessageToDict(r, preserving_proto_field_name=True)
            if r.index in derived:
                row["key_derived"] = True
            print(json.dumps({"batch_id": resp.batch_id, **row}, sort_keys=True))
            continue
        outcome = OUTCOME_NAMES.get(r.outcome, "?")
        if r.HasField("transfer"):
            t = r.transfer
            state = STATE_NAMES.get(t.state, "?")
            print(f"{r.index:>5} {r.idempotency_key}  {outcome}  {t.transfer_id} {state}")
        if r.HasField("error"):
            print(f"{r.index:>5} {r.idempotency_key}  {outcome}  {r.error.code} {r.error.reason}")
            print(f"      {r.error.message}")
    if pending:
        raise SomeItemsPending(
            f"{pending} of {len(resp.results)} items need another run (retryable, or recorded"
            f" but not readable now){f', {refused} refused' if refused else ''}: run the same"
            " command again later; it re-evaluates or re-reads only those items"
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
    s.add_argument(
        "--idempotency-key",
        help="the transfer's key (your order id). Default: derived from the request's fields"
        " (printed), so rerunning the same command is the same transfer; a second identical"
        " transfer needs its own key",
    )
    s.add_argument(
        "--journal",
        type=Path,
        help="file keeping the signed request (nonce, deadline, signature), written 0600"
        " before the first send (default: one per ledger and key under"
        " $XDG_STATE_HOME/kstb/cli, i.e. ~/.local/state/kstb/cli). A rerun with the same"
        " key resends it unchanged, so after a timeout it answers the transfer already"
        " made and never moves units twice; the same key with other fields is refused here",
    )
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
    s.add_argument(
        "--ttl",
        type=int,
        default=60,
        help="seconds until the transfer's deadline (when first signed; a rerun resends the"
        " journaled deadline)",
    )
    s.set_defaults(run=_submit)
    b = tr.add_parser(  # ---- batch API (ADR 0023)
        "submit-batch",
        help="submit many transfers from one ledger, one JSON object per line; each item"
        " gets its own result (exit 3 when some were refused, 5 when some are retryable or"
        " not readable now: run it again later)",
        description="The signed batch is written to a journal (0600) before it is sent. If"
        " the call fails or times out (the batch may be partly recorded), run the SAME"
        " command again: it resends the journaled request byte for byte, so items already"
        " recorded come back EXISTING, the rest are submitted once, and once the batch is"
        " recorded every rerun prints the recorded results. Another file under the same"
        " --batch-id is refused before anything is sent. Keep the journal until the batch"
        " is reconciled: without it a rerun signs afresh and the coordinator refuses the"
        " batch (ALREADY_EXISTS) or its recorded items (CONFLICT), though no item can move"
        " twice, as every item's key is fixed by the file or derived from it. Items never"
        " recorded whose journaled deadline (--ttl of the first run) has passed are refused"
        " on a rerun: submit them in a new batch.",
    )
    b.add_argument(
        "file",
        type=Path,
        help="JSON lines: security, to, sender, recipient, amount, idempotency_key"
        " (optional: a line without one gets a key derived from the batch id, its index and"
        " its fields, printed, the same on every run)",
    )
    b.add_argument("--from", dest="source", required=True, help="source ledger id")
    b.add_argument(
        "--batch-id",
        required=True,
        help="the batch's idempotency key (e.g. eod-2026-12-02); rerunning this command with"
        " the same file and batch id resends the journaled request and prints the recorded"
        " results",
    )
    b.add_argument(
        "--journal",
        type=Path,
        help="the batch's journal file (default: .kstb-batch-<hash of ledger and batch id>"
        ".journal.json next to FILE)",
    )
    bkey = b.add_mutually_exclusive_group(required=True)
    bkey.add_argument("--instruction-key", type=Path, help="as for submit")
    bkey.add_argument("--instruction-key-config", type=Path, help="as for submit")
    b.add_argument("--network", type=Path, required=True, help="the network file (network.toml)")
    b.add_argument(
        "--ttl",
        type=int,
        default=60,
        help="seconds until each item's deadline (when first signed; a rerun resends the"
        " journaled deadlines)",
    )
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
    except SomeItemsPending as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    except AnswerMismatch as exc:  # ---- submission journal (review F7/F8)
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except grpc.RpcError as exc:
        print(f"error: {describe_rpc_error(exc)}", file=sys.stderr)
        if getattr(args, "cmd", "") in ("submit", "submit-batch"):
            _note(_RETRY_HINTS.get(exc.code(), _RETRY_HINTS[None]))
            if exc.code() in _RUN_AGAIN:
                return 5  # as a batch's RETRYABLE items: the same command, later
        return 1
    except (ValueError, BridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
