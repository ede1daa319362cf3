"""``bridge operator rotation propose|status|list``: the bridge operator rotates the committee.

``propose`` records the proposal at the coordinator (the next epoch is read from the
ledgers; ``--remove-misbehaving`` attaches the recorded evidence against that member), then
asks each NEW member of the proposal for its consent (``SignRotation`` answered with its
signature over each ledger's rotation digest), then each member of the certifying epoch to
sign it with those consents attached (``SignRotation``: only the bridge
operator may ask, each member checks the proposal against its own ledger reads and its
rotation vote log), and hands the signatures to the coordinator, which checks them and
installs the rotation on every ledger. Re-running the same command is safe: everything is
idempotent, and a member never signs another committee for the same epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from bridge.cli import credentials
from bridge.config import load_network
from bridge.domain.committee import recover_signer
from bridge.domain.errors import InvalidCertificate
from bridge.domain.ids import parse_evm_address
from bridge.rpc.channels import sync_channel
from bridge.rpc.roles import MEMBER, Role
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import (
    operator_pb2,
    operator_pb2_grpc,
    rotation_pb2,
    verifier_pb2,
    verifier_pb2_grpc,
)

IdentityFor = Callable[[Role], ClientIdentity | None]


def add_parser(sp: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``operator rotation ...``."""
    rot = sp.add_parser("rotation", help="propose and track a committee rotation")
    rsp = rot.add_subparsers(dest="rotation_cmd", required=True)
    p = rsp.add_parser("propose", help="propose the next epoch, gather signatures, install")
    p.add_argument("--next-members", required=True, help="comma-separated 0x member addresses")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--activation", type=int, default=0, help="unix seconds (0: at install)")
    p.add_argument("--overlap", type=int, required=True, help="seconds the old epoch remains")
    p.add_argument("--remove-misbehaving", default="", help="0x address of a member to remove")
    p.add_argument(
        "--member-endpoint",
        action="append",
        default=[],
        help="0xADDRESS=host:port of a certifying member (also taken from [[committee.later]])",
    )
    p.add_argument("--network-file", type=Path, help="network file (member endpoints)")
    s = rsp.add_parser("status", help="one rotation's status per ledger")
    s.add_argument("next_epoch", type=int)
    rl = rsp.add_parser("list", help="recorded rotations, newest first")
    rl.add_argument("--limit", type=int, default=20)


def gather_signatures(
    proposal: rotation_pb2.RotationProposal,
    digests: Mapping[str, bytes],
    endpoints: Mapping[bytes, str],
    identity_for: IdentityFor,
    timeout: float = 15.0,
    consents: Sequence[verifier_pb2.LedgerSignature] = (),
) -> tuple[list[verifier_pb2.LedgerSignature], list[str]]:
    """Ask each member at ``endpoints`` to sign ``proposal`` for the ledgers of ``digests``
    (ledger -> the rotation digest the coordinator computed); returns the signatures and
    each member's refusal.

    A signature is kept only if it is over that ledger's digest, of the certifying epoch,
    and recovers to the member asked (whose role the TLS handshake proved), so one member
    answering with anything else cannot spoil the coordinator's all-or-nothing check; the
    coordinator still checks each against the certifying epoch as the ledger reports it.
    ``consents`` (from :func:`gather_consents`) go with every request; a new member's own
    consent in an answer (``epoch = next_epoch``) is not a certification and is skipped.
    """
    signatures: list[verifier_pb2.LedgerSignature] = []
    refusals: list[str] = []
    request = verifier_pb2.SignRotationRequest(
        proposal=proposal, ledger_ids=list(digests), consents=list(consents)
    )
    for address, target in sorted(endpoints.items()):
        who = "0x" + address.hex()
        try:
            with sync_channel(target, identity_for(Role(MEMBER, who))) as channel:
                resp = verifier_pb2_grpc.VerifierServiceStub(channel).SignRotation(
                    request, timeout=timeout
                )
        except grpc.RpcError as exc:
            refusals.append(f"{who}: {exc.code().name}: {exc.details()}")
            continue
        for sig in resp.signatures:
            if sig.epoch == proposal.next_epoch:
                continue  # a new member's consent, not a certification
            try:
                ok = (
                    sig.digest == digests.get(sig.ledger_id)
                    and sig.epoch == proposal.next_epoch - 1
                    and recover_signer(sig.digest, sig.signature) == address
                )
            except InvalidCertificate:
                ok = False
            if ok:
                signatures.append(sig)
            else:
                refusals.append(f"{who}: answered a signature that is not its own over the"
                                f" rotation digest of {sig.ledger_id}: dropped")  # fmt: skip
    return signatures, refusals


def gather_consents(
    proposal: rotation_pb2.RotationProposal,
    digests: Mapping[str, bytes],
    endpoints: Mapping[bytes, str],
    identity_for: IdentityFor,
    timeout: float = 15.0,
) -> list[verifier_pb2.LedgerSignature]:
    """Ask each member of ``proposal`` at ``endpoints`` for its consent: its signature
    over each ledger's rotation digest (``epoch = next_epoch``). Members already in the
    certifying epoch refuse or certify here; that is ignored (they are asked again by
    :func:`gather_signatures`). Only signatures over the wanted digest that recover to the
    member asked are kept; the certifying members check them again."""
    out: list[verifier_pb2.LedgerSignature] = []
    request = verifier_pb2.SignRotationRequest(proposal=proposal, ledger_ids=list(digests))
    for address in sorted(set(proposal.members) & set(endpoints)):
        try:
            with sync_channel(
                endpoints[address], identity_for(Role(MEMBER, "0x" + address.hex()))
            ) as channel:
                resp = verifier_pb2_grpc.VerifierServiceStub(channel).SignRotation(
                    request, timeout=timeout
                )
        except grpc.RpcError:
            continue
        for sig in resp.signatures:
            try:
                ok = (
                    sig.epoch == proposal.next_epoch
                    and sig.digest == digests.get(sig.ledger_id)
                    and recover_signer(sig.digest, sig.signature) == address
                )
            except InvalidCertificate:
                ok = False
            if ok:
                out.append(sig)
    return out


def rotation_lines(r: operator_pb2.Rotation) -> list[str]:
    """A rotation in words."""
    p = r.proposal
    lines = [
        f"epoch {p.next_epoch}: t={p.threshold} of {len(p.members)}"
        f" activation {p.activation} overlap {p.overlap}s",
        "  members " + ", ".join("0x" + m.hex() for m in p.members),
    ]
    if r.removed_member:
        lines.append(
            f"  removes 0x{r.removed_member.hex()} ({len(r.evidence)} evidence records attached)"
        )
    for x in r.ledgers:
        detail = f"  ({x.detail})" if x.detail else ""
        lines.append(f"  {x.ledger_id:<12} {x.status:<18} {x.signatures} signatures{detail}")
    return lines


def _show(r: operator_pb2.Rotation, as_json: bool) -> None:
    if as_json:
        print(json.dumps(MessageToDict(r, preserving_proto_field_name=True), sort_keys=True))
    else:
        print("\n".join(rotation_lines(r)))


def _endpoints(a: argparse.Namespace) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    network = a.network_file or getattr(a, "client_network", None)
    if network:
        for address, endpoint in load_network(network).later_members.items():
            if endpoint:
                out[address] = endpoint
    for item in a.member_endpoint:
        address, sep, target = item.partition("=")
        if not sep or not target:
            raise SystemExit(f"--member-endpoint {item!r}: expected 0xADDRESS=host:port")
        out[parse_evm_address(address)] = target
    return out


def run(a: argparse.Namespace, stub: operator_pb2_grpc.OperatorServiceStub) -> int:
    """Run one ``operator rotation`` command; returns the exit code."""
    if a.rotation_cmd == "list":
        for r in stub.ListRotations(
            operator_pb2.ListRotationsRequest(limit=a.limit), timeout=a.timeout
        ).rotations:
            _show(r, a.json)
        return 0
    if a.rotation_cmd == "status":
        r = stub.GetRotation(
            operator_pb2.GetRotationRequest(next_epoch=a.next_epoch), timeout=a.timeout
        )
        _show(r, a.json)
        return 0
    members = [parse_evm_address(m.strip()) for m in a.next_members.split(",") if m.strip()]
    remove = parse_evm_address(a.remove_misbehaving) if a.remove_misbehaving else b""
    rotation = stub.ProposeRotation(
        operator_pb2.ProposeRotationRequest(
            next_members=members,
            threshold=a.threshold,
            activation=a.activation,
            overlap=a.overlap,
            remove_member=remove,
        ),
        timeout=a.timeout,
    )
    _show(rotation, a.json)
    # Only ledgers still short of a certificate need signatures (a re-run after it was
    # certified or installed asks nobody).
    wanted = {x.ledger_id: x.digest for x in rotation.ledgers if x.status == "proposed"}
    if not wanted:
        return 0
    endpoints = _endpoints(a)

    # --tls-ca narrows the trust roots toward the coordinator only; a member is
    # checked against the CAs the network file names for its member role.
    def member_identity(role: Role) -> ClientIdentity | None:
        return credentials.identity(argparse.Namespace(**{**vars(a), "tls_ca": []}), role)

    # SECURITY (review finding 1): new members prove their keys and consent first.
    consents = gather_consents(rotation.proposal, wanted, endpoints, member_identity, a.timeout)
    signatures, refusals = gather_signatures(
        rotation.proposal, wanted, endpoints, member_identity, a.timeout, consents
    )
    for refusal in refusals:
        print(f"  refused: {refusal}", file=sys.stderr if a.json else sys.stdout)
    rotation = stub.CertifyRotation(
        operator_pb2.CertifyRotationRequest(
            next_epoch=rotation.proposal.next_epoch, signatures=signatures
        ),
        timeout=a.timeout,
    )
    _show(rotation, a.json)
    return 0
