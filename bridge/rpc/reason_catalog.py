"""What every reason a client can receive in ``google.rpc.ErrorInfo`` means (ADR 0015).

One entry per member of :class:`~bridge.core.reasons.ErrorReason` and
:class:`~bridge.domain.errors.BridgeReason` (a unit test enforces completeness); the
brokerage guide ``docs/operators/brokerage-errors.md`` is generated from this table and
:data:`~bridge.rpc.errors.RETRYABLE_REASONS` by ``python -m bridge.tools.gen_error_docs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import BridgeReason

R = ErrorReason
B = BridgeReason

_MEANING: dict[ErrorReason | BridgeReason, str] = {
    # Bridge-level reasons.
    B.INVALID_REQUEST: "The request is malformed (a field, an ISIN, an address, the instruction encoding).",
    B.NOT_FOUND: "The named transfer, security or ledger does not exist.",
    B.CONFLICT: "The request conflicts with an earlier one (e.g. an idempotency key reused with other terms).",
    B.PRECONDITION_FAILED: "Well-formed, but the bridge's state forbids it now.",
    B.CERTIFICATE_REFUSED: "A signature, instruction or certificate does not verify (wrong key, wrong terms, unregistered instructor).",
    B.UNAVAILABLE: "A dependency (ledger, relayer, verifier) cannot be reached right now.",
    B.UNAUTHENTICATED: "No valid client certificate, or the certificate is no longer accepted.",
    B.PERMISSION_DENIED: "Your organisation's role or scope does not allow this call.",
    B.HALTED: "The depository halted the security or the ledger; the transfer waits for the release.",
    B.FLOW_LIMIT_QUEUED: "A flow limit is full; the transfer is queued until the bucket refills.",
    B.CLAIM_REFUSED: "A committee member refused to sign the claim (its own read of the ledger disagrees).",
    B.STALE_VERSION: "A versioned registration named a version other than the next one; read it again.",
    B.INTERNAL: "An unexpected fault in the bridge; the operator has the log.",
    B.NOT_LEADER: "This coordinator is a standby (or lost its lease); call the leader named in the `leader` detail, or another coordinator.",
    B.UNKNOWN: "The peer sent no valid details (or a reason outside this list); treat as unknown.",
    B.DATABASE_UNAVAILABLE: "The coordinator cannot use its database right now; retry the same (idempotent) request, here or on another coordinator.",
    B.RESOURCE_EXHAUSTED: "You hold as much of a bounded resource as a caller may (e.g. concurrent WatchBatch streams, or `max_unfinished_per_ledger` unfinished transfers from your ledger); retry once one ends.",
    # Authorisation on the ledger.
    R.NOT_ADMIN: "The caller is not the endpoint's admin.",
    R.NOT_RELAYER: "The caller is not a registered relayer of the endpoint.",
    R.NOT_SENDER: "Only the holder named as sender may do this.",
    R.NOT_BRIDGE: "Only the token's bridge endpoint may do this.",
    R.NO_IDENTITY: "The Fabric proposal carries no creator identity.",
    # Terms and legs.
    R.WRONG_LEDGER: "The terms do not name this ledger and endpoint (configuration mismatch).",
    R.UNKNOWN_SECURITY: "The security is not registered on this ledger.",
    R.ZERO_AMOUNT: "The amount is zero.",
    R.ZERO_ADDRESS: "An address is zero.",
    R.TRANSFER_EXISTS: "A transfer with this id already exists on the ledger.",
    R.BAD_STATE: "The leg is not in the state this step needs.",
    R.TERMS_MISMATCH: "The ledger holds other terms for this transfer id.",
    R.NOT_EXPIRED: "The transfer's deadline has not passed yet.",
    R.DEADLINE_PASSED: "The transfer's deadline has passed; nothing moved.",
    R.INVALID_SENDER: "The sender is not a valid holder address on the source ledger.",
    # Certificates.
    R.WRONG_EPOCH: "The certificate is of an epoch the ledger does not accept now (a rotation is under way).",
    R.TOO_FEW_SIGNATURES: "The certificate has fewer than the threshold of signatures.",
    R.MALFORMED_SIGNATURES: "The certificate's signatures are malformed.",
    R.INVALID_SIGNATURE: "A signature does not verify.",
    R.SIGNERS_NOT_ASCENDING: "The certificate's signers are not strictly ascending.",
    R.NOT_COMMITTEE_MEMBER: "A signer is not a member of the committee epoch.",
    R.INVALID_COMMITTEE: "The committee definition is invalid.",
    R.EPOCH_NOT_ACTIVE: "The committee epoch is not active yet.",
    R.INVALID_ROTATION: "The committee rotation is invalid.",
    R.ROTATION_ALREADY_INSTALLED: "This rotation is already installed.",
    R.EPOCH_ALREADY_INSTALLED: "This epoch is already installed.",
    R.TRANSACTION_TIME_SKEWED: "A Fabric endorser's clock disagrees with the proposal's time.",
    # Instructions.
    R.MISSING_INSTRUCTION: "The lock carries no instruction signature.",
    R.INVALID_INSTRUCTION: "The instruction signature does not verify over these terms.",
    R.UNKNOWN_INSTRUCTOR: "The instructing key is not registered on the source ledger.",
    # Administration and tokens.
    R.SECURITY_ALREADY_REGISTERED: "The security is already registered on this endpoint.",
    R.SECURITY_MISMATCH: "The token does not hold the security it is registered for.",
    R.TOKEN_PAUSED: "The token is paused by its issuer.",
    R.HOLDER_NOT_ELIGIBLE: "The holder is not eligible to hold the security.",
    R.HOLDER_FROZEN: "The holder is frozen by the issuer.",
    R.INSUFFICIENT_BALANCE: "The sender's balance is below the amount.",
    R.BRIDGE_HOLDS_ESCROW: "The old bridge endpoint still holds escrow or parked units.",
    R.OVERFLOW: "An amount would overflow.",
    R.FLOW_LIMIT_EXCEEDED: "The lane's flow limit is full (figures: available, requested).",
    R.TOO_EARLY: "A large transfer's delay has not passed (figure: notBefore, unix seconds).",
    R.INVALID_FLOW_LIMIT: "The flow limit parameters are invalid.",
    R.SECURITY_HALTED: "The depository halted this security or ledger.",
    R.NO_DEPOSITORY: "The endpoint has no depository key.",
    R.DEPOSITORY_ALREADY_SET: "The depository key is already set.",
    R.NOT_DEPOSITORY: "The order is not signed by the depository's key.",
    R.STALE_ORDER: "The depository order's sequence is not the next one.",
    R.ORDER_EXPIRED: "The depository order has expired.",
    R.INVALID_ORDER: "The depository order is malformed.",
    R.INVALID_ARGUMENT: "The chaincode refused a malformed argument.",
    R.NOT_INITIALIZED: "The chaincode awaits its Init.",
    R.ALREADY_INITIALIZED: "The chaincode is already initialised.",
    R.WRONG_INIT_PARAMETERS: "The chaincode Init parameters do not match.",
    R.UNKNOWN_FUNCTION: "The chaincode has no such function.",
    R.NOT_PENDING_ADMIN: "The caller is not the proposed admin.",
    R.INVALID_GOVERNANCE: "The governance change is invalid.",
    R.ALREADY_APPROVED: "This organisation already approved the proposal.",
    R.UNKNOWN_PROPOSAL: "No such governance proposal.",
    R.STALE_PROPOSAL: "The governance proposal is stale.",
    R.NOT_PARKED: "No units are parked for this transfer.",
    R.NOT_TOKEN_ADMIN: "The caller is not the token's admin.",
    R.RECIPIENT_REFUSED: "The recipient may not receive the parked units.",
    R.BRIDGE_HOLDS_PREPARED: "The old bridge endpoint still has units prepared.",
    R.SUPPLY_NOT_COUNTED: "The security's supply counters are not complete yet (state from before them): any organisation admin of the ledger runs CountSupply to completion; no partial figure is ever given. The coordinator refuses new transfers of the security meanwhile.",
    # Batched certificates (ADR 0025).
    R.TOO_MANY_ITEMS: "A batched read (the EVM read lens) was asked for more items than its bound (256).",
    R.LENGTH_MISMATCH: "A batched read (the EVM read lens) was given lists of different lengths.",
    R.INVALID_BATCH: "A batched step's certificate covers no claim, fewer claims than the call's items, or the call has no item.",
    R.INVALID_BATCH_PROOF: "An item's inclusion proof does not lead to the certified batch root (another root, ledger, epoch or terms).",
    R.DUPLICATE_BATCH_ITEM: "The same transfer occurs twice in one batched call (or one claim twice in a batch).",
    R.WRONG_BATCH_KIND: "The batch certificate certifies another claim kind than the step needs (a COMMIT root cannot abort).",
    # Adapter-side reasons.
    R.READ_ONLY: "The relayer's adapter has no operator key (configuration).",
    R.WRONG_LEG: "The step does not apply to this leg.",
    R.MISSING_CERTIFICATE: "The step needs a certificate and none was given.",
    R.MALFORMED_ANSWER: "The ledger answered something the adapter cannot read.",
    R.TRANSACTION_INVALID: "The Fabric transaction was ordered but failed validation (figure: validationCode).",
    R.UNKNOWN_REFUSAL: "The ledger refused with data outside the closed set (kept as text only).",
    R.CHAINCODE_INTERNAL: "The chaincode failed on an unexpected exception.",
}

MEANING: Mapping[ErrorReason | BridgeReason, str] = MappingProxyType(_MEANING)
"""One line per reason: what it means for the caller."""
