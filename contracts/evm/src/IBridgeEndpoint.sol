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
}
