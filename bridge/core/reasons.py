"""The closed set of reasons a ledger endpoint refuses a call, and the core's typed error.

The values are the error names the EVM contracts revert with and the Fabric chaincode puts
before the colon of its error message; a process that receives a refusal maps it to one
member of :class:`ErrorReason` instead of parsing free text.
"""

from __future__ import annotations

import enum


class ErrorReason(enum.StrEnum):
    """Every refusal a bridge endpoint or its token can report (the contracts' error names)."""

    # Authorisation.
    NOT_ADMIN = "NotAdmin"
    NOT_RELAYER = "NotRelayer"
    NOT_SENDER = "NotSender"
    NOT_BRIDGE = "NotBridge"
    NO_IDENTITY = "NoIdentity"
    # Terms and legs.
    WRONG_LEDGER = "WrongLedger"
    UNKNOWN_SECURITY = "UnknownSecurity"
    ZERO_AMOUNT = "ZeroAmount"
    ZERO_ADDRESS = "ZeroAddress"
    TRANSFER_EXISTS = "TransferExists"
    BAD_STATE = "BadState"
    TERMS_MISMATCH = "TermsMismatch"
    NOT_EXPIRED = "NotExpired"
    DEADLINE_PASSED = "DeadlinePassed"
    INVALID_SENDER = "InvalidSender"
    # Certificates.
    WRONG_EPOCH = "WrongEpoch"
    TOO_FEW_SIGNATURES = "TooFewSignatures"
    MALFORMED_SIGNATURES = "MalformedSignatures"
    INVALID_SIGNATURE = "InvalidSignature"
    SIGNERS_NOT_ASCENDING = "SignersNotAscending"
    NOT_COMMITTEE_MEMBER = "NotCommitteeMember"
    INVALID_COMMITTEE = "InvalidCommittee"
    # Committee rotation (ADR 0008).
    EPOCH_NOT_ACTIVE = "EpochNotActive"
    INVALID_ROTATION = "InvalidRotation"
    ROTATION_ALREADY_INSTALLED = "RotationAlreadyInstalled"
    EPOCH_ALREADY_INSTALLED = "EpochAlreadyInstalled"
    TRANSACTION_TIME_SKEWED = "TransactionTimeSkewed"
    # Instructions (protocol v2).
    MISSING_INSTRUCTION = "MissingInstruction"
    INVALID_INSTRUCTION = "InvalidInstruction"
    UNKNOWN_INSTRUCTOR = "UnknownInstructor"
    # Administration and tokens.
    SECURITY_ALREADY_REGISTERED = "SecurityAlreadyRegistered"
    SECURITY_MISMATCH = "SecurityMismatch"
    TOKEN_PAUSED = "TokenPaused"  # noqa: S105 (an error name, not a secret)
    HOLDER_NOT_ELIGIBLE = "HolderNotEligible"
    HOLDER_FROZEN = "HolderFrozen"
    INSUFFICIENT_BALANCE = "InsufficientBalance"
    BRIDGE_HOLDS_ESCROW = "BridgeHoldsEscrow"
    OVERFLOW = "Overflow"
    # ---- flow limits (ADR 0010)
    FLOW_LIMIT_EXCEEDED = "FlowLimitExceeded"
    TOO_EARLY = "TooEarly"
    INVALID_FLOW_LIMIT = "InvalidFlowLimit"

    # ---- depository halt
    SECURITY_HALTED = "SecurityHalted"
    NO_DEPOSITORY = "NoDepository"
    DEPOSITORY_ALREADY_SET = "DepositoryAlreadySet"
    NOT_DEPOSITORY = "NotDepository"
    STALE_ORDER = "StaleOrder"
    ORDER_EXPIRED = "OrderExpired"
    INVALID_ORDER = "InvalidOrder"
    # Fabric chaincode only.
    INVALID_ARGUMENT = "InvalidArgument"
    NOT_INITIALIZED = "NotInitialized"
    ALREADY_INITIALIZED = "AlreadyInitialized"
    WRONG_INIT_PARAMETERS = "WrongInitParameters"
    UNKNOWN_FUNCTION = "UnknownFunction"
    # ---- admin (issue 10: admin rotation; Fabric k-of-n admin changes)
    NOT_PENDING_ADMIN = "NotPendingAdmin"
    INVALID_GOVERNANCE = "InvalidGovernance"
    ALREADY_APPROVED = "AlreadyApproved"
    UNKNOWN_PROPOSAL = "UnknownProposal"
    STALE_PROPOSAL = "StaleProposal"
    # ---- parking (issue 10: compliance after prepare)
    NOT_PARKED = "NotParked"
    NOT_TOKEN_ADMIN = "NotTokenAdmin"  # noqa: S105 (an error name, not a secret)
    RECIPIENT_REFUSED = "RecipientRefused"
    BRIDGE_HOLDS_PREPARED = "BridgeHoldsPrepared"
    # ---- exact reads (issue 14, ADR 0024): Fabric/CometBFT chaincode only. A supply read
    # refused because the security's counters are not complete yet (run CountSupply).
    SUPPLY_NOT_COUNTED = "SupplyNotCounted"
    # ---- batched certificates (issue 14, ADR 0025)
    INVALID_BATCH = "InvalidBatch"
    INVALID_BATCH_PROOF = "InvalidBatchProof"
    DUPLICATE_BATCH_ITEM = "DuplicateBatchItem"
    WRONG_BATCH_KIND = "WrongBatchKind"
    # ---- the EVM read lens (issue 14 item 4): a batched read asked for too much, or garbled
    TOO_MANY_ITEMS = "TooManyItems"
    LENGTH_MISMATCH = "LengthMismatch"
    # ---- structured errors (ADR 0015): refusals an adapter raises before or after the
    # endpoint, never an endpoint's own error name.
    READ_ONLY = "ReadOnly"
    WRONG_LEG = "WrongLeg"
    MISSING_CERTIFICATE = "MissingCertificate"
    MALFORMED_ANSWER = "MalformedAnswer"
    TRANSACTION_INVALID = "TransactionInvalid"
    UNKNOWN_REFUSAL = "UnknownRefusal"
    CHAINCODE_INTERNAL = "Internal"  # the chaincode failed on an unexpected exception

    @classmethod
    def parse(cls, name: str) -> ErrorReason | None:
        """The member whose value is ``name``, or None for a name outside the closed set."""
        try:
            return cls(name)
        except ValueError:
            return None


class ProtocolError(Exception):
    """A rule of the core refused its input; ``reason`` is the endpoint error it maps to."""

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
