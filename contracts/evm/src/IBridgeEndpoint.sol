// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {BridgeTypes} from "./BridgeTypes.sol";

/// The ledger side of the KSTB two-phase commit. One endpoint per ledger; it is both
/// the source (outbound legs) and the target (inbound legs) of transfers.
interface IBridgeEndpoint {
    /// Outbound (source) leg: None -> Locked -> Burned | Released.
    enum OutState { None, Locked, Burned, Released }
    /// Inbound (target) leg: None -> Prepared | Rejected | Expired; Prepared -> Minted | Aborted;
    /// Rejected | Expired | None -> Aborted (None -> Aborted is a tombstone blocking a late prepare).
    /// A Minted leg with a nonzero reason (2 not eligible, 3 frozen) was parked: the recipient
    /// could no longer receive at commit, and the units wait in `parked(transferId)`.
    enum InState { None, Prepared, Rejected, Expired, Minted, Aborted }

    /// Why a target refused to prepare (0 = none).
    /// 1 UnknownSecurity, 2 RecipientNotEligible, 3 RecipientFrozen, 4 TokenPaused,
    /// 5 InvalidRecipient (the recipient word is not a nonzero EVM address)
    event TransferLocked(bytes32 indexed transferId, bytes32 indexed securityId, BridgeTypes.Terms terms, bytes32 termsHash);
    /// Emitted on every leg transition. leg: 0 outbound, 1 inbound. state: OutState or InState value.
    event LegStateChanged(
        bytes32 indexed transferId,
        bytes32 indexed securityId,
        uint8 leg,
        uint8 state,
        uint8 reason,
        bytes32 termsHash,
        uint256 amount
    );
    event SecurityRegistered(bytes32 indexed securityId, address token);
    event RelayerSet(address indexed relayer, bool enabled);
    event InstructorSet(address indexed instructor, bool enabled);

    error NotAdmin();
    error NotRelayer();
    error NotSender();
    error WrongLedger();
    error UnknownSecurity(bytes32 securityId);
    error ZeroAmount();
    error TransferExists(bytes32 transferId);
    error BadState(bytes32 transferId, uint8 state);
    error TermsMismatch(bytes32 transferId);
    error WrongEpoch(uint64 got, uint64 current);
    error TooFewSignatures(uint256 got, uint256 threshold);
    error MalformedSignatures();
    error InvalidSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error NotCommitteeMember(address signer);
    error NotExpired(uint64 deadline, uint256 nowTs);
    error DeadlinePassed(uint64 deadline, uint256 nowTs);
    error InvalidSender(bytes32 sender);
    error SecurityAlreadyRegistered(bytes32 securityId, address token);
    error SecurityMismatch(bytes32 securityId, address token);
    error InvalidCommittee();
    error ZeroAddress();
    error MissingInstruction();
    error InvalidInstruction();
    error UnknownInstructor(bytes32 instructor);

    // ---- committee rotation (ADR 0008)
    /// One installed epoch and when it verifies: from `activeFrom` (inclusive) until
    /// `activeUntil` (exclusive; 0 = no end), by `block.timestamp`.
    struct CommitteeWindow {
        uint64 epoch;
        uint8 threshold;
        uint64 activeFrom;
        uint64 activeUntil;
        address[] members;
    }
    /// `epoch` verifies until `activeUntilOld`; `nextEpoch` from `activation` on.
    event CommitteeRotated(uint64 indexed epoch, uint64 indexed nextEpoch, uint64 activation, uint64 activeUntilOld);
    error EpochNotActive(uint64 epoch, uint64 activation);
    error InvalidRotation();
    error RotationAlreadyInstalled(uint64 nextEpoch);
    error EpochAlreadyInstalled(uint64 nextEpoch);
    /// Installs `nextEpoch` with a certificate of the latest, active epoch `epoch` over
    /// `BridgeTypes.rotationDigest`. Anyone may call: the certificate is the authority.
    function rotateCommittee(
        uint64 epoch,
        uint64 nextEpoch,
        uint8 threshold,
        address[] calldata members,
        uint64 activation,
        uint64 overlap,
        BridgeTypes.Certificate calldata cert
    ) external;
    /// The latest installed epoch and, while its window lasts, the previous one (ascending).
    function committees() external view returns (CommitteeWindow[] memory windows);
    /// `BridgeTypes.rotationDigest` for any domain (checked against the core's vectors).
    function rotationDigestFor(
        bytes32 network,
        bytes32 ledger,
        bytes32 bridge,
        uint64 epoch,
        uint64 nextEpoch,
        uint8 threshold,
        address[] calldata members,
        uint64 activation,
        uint64 overlap
    ) external pure returns (bytes32);

    // --- administration (least privilege: admin configures, relayers only move legs) ---
    function ledgerId() external view returns (bytes32);
    function admin() external view returns (address);
    function setRelayer(address relayer, bool enabled) external; // onlyAdmin
    function isRelayer(address account) external view returns (bool);
    /// Registers or removes a brokerage instruction key; a relayer's lock must name one.
    function setInstructor(address key, bool enabled) external; // onlyAdmin
    function isInstructor(address key) external view returns (bool);
    function registerSecurity(bytes32 securityId, address token) external; // onlyAdmin
    function tokenOf(bytes32 securityId) external view returns (address);
    /// The latest installed epoch (it may not be active yet: see `committees`).
    function committee() external view returns (uint64 epoch, uint8 threshold, address[] memory members);

    // --- source side ---
    /// Escrow `amount` of the sender's units. Caller: the sender itself (then `t.instructor`
    /// must be the sender), or a relayer carrying `instruction`, a signature by
    /// `t.instructor` over `instructionDigestOf(t)`.
    function lock(BridgeTypes.Terms calldata t, bytes calldata instruction)
        external
        returns (bytes32 transferId);
    /// Burn escrowed units (COMMIT certificate) or release them to the sender (ABORT).
    function commit(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata cert) external;
    function abort(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata cert) external;

    // --- target side ---
    /// With a LOCKED certificate: Prepared if the recipient may receive, else Rejected(reason).
    function prepare(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata lockedCert) external;
    /// With a LOCKED certificate, after the deadline, if not prepared: the Expired marker.
    function markExpired(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata lockedCert) external;

    // --- queries ---
    function outbound(bytes32 transferId) external view returns (uint8 state, bytes32 termsHash, uint256 amount, bytes32 securityId);
    function inbound(bytes32 transferId) external view returns (uint8 state, bytes32 termsHash, uint256 amount, bytes32 securityId, uint8 reason);
    function preparedTotal(bytes32 securityId) external view returns (uint256);
    /// Cumulative units burned by committed outbound legs (Locked -> Burned); never decreases.
    function burnedOut(bytes32 securityId) external view returns (uint256);
    /// Cumulative units minted by committed inbound legs (Prepared -> Minted); never decreases.
    function mintedIn(bytes32 securityId) external view returns (uint256);
    /// One consistent read of a registered security's supply figures (reverts UnknownSecurity):
    /// token totalSupply, escrow held by this endpoint, preparedTotal, burnedOut, mintedIn.
    function supplyOf(bytes32 securityId)
        external
        view
        returns (
            uint256 totalSupply,
            uint256 escrowed,
            uint256 prepared,
            uint256 burned,
            uint256 minted
        );

    // ---- admin
    event AdminProposed(address indexed admin, address indexed proposed);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    error NotPendingAdmin(address caller);
    function pendingAdmin() external view returns (address);
    /// Current admin only; address(0) cancels a pending proposal.
    function proposeAdmin(address next) external;
    /// The pending admin only: it becomes the admin.
    function acceptAdmin() external;

    // ---- parking
    event Parked(bytes32 indexed transferId, bytes32 indexed securityId, address recipient, uint256 amount, uint8 reason);
    event ParkedReleased(bytes32 indexed transferId, bytes32 indexed securityId, address to, uint256 amount);
    error NotParked(bytes32 transferId);
    error NotTokenAdmin(address caller);
    error RecipientRefused(address to, uint8 status);
    function parked(bytes32 transferId) external view returns (uint256);
    function parkedTotal(bytes32 securityId) external view returns (uint256);
    /// The security token's admin only: deliver a transfer's parked units to a holder who may receive.
    function releaseParked(bytes32 transferId, address to) external;

    // ---- flow limits (ADR 0010)
    /// A lane's limit (security, counterpart ledger) was set; all zero removes it.
    event FlowLimitSet(
        bytes32 indexed securityId,
        bytes32 indexed counterpart,
        uint128 outboundCapacity,
        uint128 inboundCapacity,
        uint64 window,
        uint16 shareBps,
        uint128 largeThreshold,
        uint64 largeDelay
    );
    /// A leg crossed its lane's large-transfer threshold: it may not commit before `notBefore`.
    event TransferDelayed(bytes32 indexed transferId, uint8 leg, uint64 notBefore);
    error FlowLimitExceeded(uint256 available, uint256 requested);
    error TooEarly(uint64 notBefore, uint256 nowTs);
    error InvalidFlowLimit();

    /// Sets the flow limit of the lane (securityId, counterpart) on this ledger (onlyAdmin).
    function setFlowLimit(
        bytes32 securityId,
        bytes32 counterpart,
        uint128 outboundCapacity,
        uint128 inboundCapacity,
        uint64 window,
        uint16 shareBps,
        uint128 largeThreshold,
        uint64 largeDelay
    ) external;
    /// The lane's limit and what its buckets hold now (see BridgeEndpoint.flowStatus).
    function flowStatus(bytes32 securityId, bytes32 counterpart)
        external
        view
        returns (uint256[10] memory status);
    /// When the legs of `transferId` on this ledger may commit (0: no delay).
    function notBefore(bytes32 transferId) external view returns (uint64 outboundAt, uint64 inboundAt);

    // --- digests (the Python side must reproduce these byte for byte) ---
    function transferIdOf(BridgeTypes.Terms calldata t) external pure returns (bytes32);
    function termsHashOf(BridgeTypes.Terms calldata t) external pure returns (bytes32);
    /// The digest committee members sign for a claim verified by this endpoint.
    function claimDigestOf(uint64 epoch, uint8 kind, bytes32 transferId, bytes32 termsHash)
        external
        view
        returns (bytes32);
    /// `BridgeTypes.claimDigest` for any domain (checked against the protocol core's vectors).
    function claimDigestFor(
        bytes32 network,
        bytes32 ledger,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 transferId,
        bytes32 termsHash
    ) external pure returns (bytes32);
    /// The digest `t.instructor` signs to instruct a relayer's lock of `t` on this network.
    function instructionDigestOf(BridgeTypes.Terms calldata t) external view returns (bytes32);
    /// `BridgeTypes.instructionDigest` for any network (checked against the core's vectors).
    function instructionDigestFor(bytes32 network, bytes32 termsHash)
        external
        pure
        returns (bytes32);
    /// This ledger's network word, `bytes32(block.chainid)`, bound into every claim digest.
    function networkWord() external view returns (bytes32);

    // ---- depository halt

    event DepositorySet(address indexed depository);
    /// A depository order was applied (action 1 halt, 2 release, 3 key change).
    event DepositoryOrder(
        uint64 indexed sequence, uint8 action, bytes32 indexed securityId, bytes32 key
    );

    error SecurityHalted(bytes32 securityId);
    error NoDepository();
    error DepositoryAlreadySet(address depository);
    error NotDepository(address signer);
    error StaleOrder(uint64 sequence, uint64 last);
    error OrderExpired(uint64 expiry, uint256 nowTs);
    error InvalidOrder();

    /// The admin sets the depository key once, while none is set; afterwards only an order
    /// signed by the current depository key replaces it.
    function setDepository(address key) external;
    function depository() external view returns (address);
    /// Applies an order signed by the depository (anyone may submit; the signature is the
    /// authority).
    function applyOrder(BridgeTypes.Order calldata o, bytes calldata signature) external;
    /// (security halted here, whole ledger halted, last applied order sequence).
    function haltStatus(bytes32 securityId)
        external
        view
        returns (bool securityHalted, bool ledgerHalted, uint64 sequence);
    /// `BridgeTypes.orderDigest` (checked against the protocol core's vectors).
    function orderDigestOf(BridgeTypes.Order calldata o) external pure returns (bytes32);

    // ---- batched steps (ADR 0025)
    /// An item of a batched step was already in the state the step would put it in (a
    /// replayed item): nothing was applied. leg: 0 outbound, 1 inbound; state: its state.
    event BatchItemSkipped(bytes32 indexed transferId, uint8 leg, uint8 state);
    /// No item, more items than the certificate's count, or not one proof per item.
    error InvalidBatch();
    /// Item `index`'s claim does not prove into the certified root.
    error InvalidBatchProof(uint256 index);
    /// Item `index` repeats an earlier item of the same call.
    error DuplicateBatchItem(uint256 index);
    /// The batch certificate certifies claims of kind `got`; the step needs `needed`.
    error WrongBatchKind(uint8 got, uint8 needed);
    /// Many instructed locks (relayer, or the holder for its own): each item as `lock`; an
    /// item already locked with the same terms is skipped. Any refusal reverts the call.
    function lockBatch(BridgeTypes.Terms[] calldata ts, bytes[] calldata instructions) external;
    /// Many prepares under one LOCKED batch certificate; item i proves with `proofs[i]`.
    function prepareBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external;
    /// Many commits (either leg) under one COMMIT batch certificate.
    function commitBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external;
    /// Many aborts (either leg) under one ABORT batch certificate.
    function abortBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external;
    /// The root `proof` leads to from the leaf of `claimDigest` (checked against the vectors).
    function batchRootOf(bytes32 claimDigest, bytes32[] calldata proof) external pure returns (bytes32);
    /// `BridgeTypes.batchRootDigest` for any domain (checked against the core's vectors).
    function batchRootDigestFor(
        bytes32 network,
        bytes32 ledger,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 root,
        uint32 count
    ) external pure returns (bytes32);
}
