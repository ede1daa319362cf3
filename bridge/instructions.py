"""Client-side transfer instructions (protocol v2): what a brokerage does before it submits.

:class:`Brokerage` chooses each request's nonce and deadline once per idempotency key, builds
the terms exactly as the coordinator will, and signs the instruction with the instruction
key registered for the source ledger (any :class:`~bridge.domain.signer.Signer`: a key
file, a keystore or an HSM).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from bridge.config import NetworkConfig
from bridge.coordinator.requests import terms_for, validate_submit
from bridge.domain.errors import InvalidInput
from bridge.domain.instructions import Instruction, make_nonce, sign_instruction
from bridge.domain.signer import Signer
from bridge.rpc.convert import instruction_to_pb
from bridge.v1 import transfer_pb2


class Brokerage:
    """Signs transfer instructions as the brokerages of the devnet's ledgers.

    ``keys`` maps a source ledger to the Signer of its registered instruction key. The nonce
    and deadline of an idempotency key are chosen once and remembered, so a retry sends the
    same instruction (hence the same transfer id) - within this object's lifetime only: they
    are kept in memory, so a program that must retry across a restart persists the signed
    request (or nonce and deadline) before the first send, as ``bridge transfer submit`` and
    ``submit-batch`` do (``bridge.cli.journal``).
    """

    def __init__(self, network: NetworkConfig, keys: Mapping[str, Signer], ttl: int = 60):
        self._network = network
        self._keys = dict(keys)
        self._ttl = ttl
        self._chosen: dict[str, tuple[bytes, int]] = {}

    def signer(self, ledger: str) -> Signer:
        """The instruction key of ``ledger``'s brokerage."""
        if ledger not in self._keys:
            raise InvalidInput(f"no instruction key for ledger {ledger!r}")
        return self._keys[ledger]

    def instruct(
        self,
        request: transfer_pb2.SubmitTransferRequest,
        signer: Signer | None = None,
        deadline: int | None = None,
    ) -> transfer_pb2.SubmitTransferRequest:
        """A copy of ``request`` with its instruction, signed by ``signer`` (default: the
        source ledger's key). Raises InvalidInput for a request the coordinator would refuse
        before looking at the instruction."""
        req = validate_submit(self._network, request)
        key = signer or self.signer(req.source_ledger)
        nonce, chosen_deadline = self._chosen.setdefault(
            req.idempotency_key,
            (
                make_nonce(req.idempotency_key, secrets.token_bytes(32)),
                deadline if deadline is not None else int(time.time()) + self._ttl,
            ),
        )
        unsigned = Instruction(
            nonce=nonce, deadline=chosen_deadline, instructor=key.address, signature=bytes(65)
        )
        terms = terms_for(self._network, req, unsigned)
        network_word = self._network.ledgers[req.source_ledger].network_word
        signed = Instruction(
            nonce=nonce,
            deadline=chosen_deadline,
            instructor=key.address,
            signature=sign_instruction(key, network_word, terms),
        )
        out = transfer_pb2.SubmitTransferRequest()
        out.CopyFrom(request)
        out.instruction.CopyFrom(instruction_to_pb(signed))
        return out
