// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {BridgeTypes} from "./BridgeTypes.sol";
import {IBridgeEndpoint} from "./IBridgeEndpoint.sol";
import {SecurityToken} from "./SecurityToken.sol";

/// The EVM side of the KSTB two-phase commit: the source of outbound legs (lock, then burn or
/// release) and the target of inbound legs (prepare or reject, then mint or abort).
///
/// A lock needs the holder (holder-direct) or a relayer carrying the instructing brokerage's
/// signature. Every leg transition after `lock` needs a certificate of the current committee
/// over a claim digest bound to this network (chain id), ledger, contract and epoch (see
/// `BridgeTypes.claimDigest`), so a relayer can only deliver decisions, never make them.
/// State changes are recorded before any call to the token (checks-effects-interactions);
/// tokens are registered once and trusted not to re-enter.
contract BridgeEndpoint is IBridgeEndpoint {
    /// secp256k1n / 2: signatures with a larger `s` are malleable twins and are refused.
    uint256 private constant HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 private constant SIGNATURE_LENGTH = 65;
    uint8 private constant LEG_OUT = 0;
    uint8 private constant LEG_IN = 1;
    uint8 private constant REASON_UNKNOWN_SECURITY = 1;
    uint8 private constant REASON_INVALID_RECIPIENT = 5;

    struct OutLeg {
        OutState state;
        bytes32 termsHash;
        uint256 amount;
        bytes32 securityId;
    }

    struct InLeg {
        InState state;
        uint8 reason;
        bytes32 termsHash;
        uint256 amount;
        bytes32 securityId;
    }

    bytes32 public immutable override ledgerId;
    /// The endpoint admin; rotated with `proposeAdmin` + `acceptAdmin` (see `// ---- admin`).
    address public override admin;

    mapping(address => bool) public override isRelayer;
    /// Brokerage instruction keys this endpoint accepts on a relayer's lock (set by the admin).
    mapping(address => bool) public override isInstructor;
    mapping(bytes32 => address) public override tokenOf;
    /// Units prepared (promised to recipients) but not yet minted, per security.
    mapping(bytes32 => uint256) public override preparedTotal;
    /// Units ever burned by committed outbound legs (Locked -> Burned), per security.
    /// Cumulative: never decreases. Used by the supply identity (see `supplyOf`).
    mapping(bytes32 => uint256) public override burnedOut;
    /// Units ever minted by committed inbound legs (Prepared -> Minted), per security.
    /// Cumulative: never decreases.
    mapping(bytes32 => uint256) public override mintedIn;

    mapping(bytes32 => OutLeg) private _out;
    mapping(bytes32 => InLeg) private _in;

    // Committee: every installed epoch by number; `_epoch` is the latest. Only the latest and
    // the one before it can verify (see `_verifyingEpoch`, ADR 0008).
    struct Epoch {
        uint64 activeFrom;
        uint64 activeUntil; // 0: no end
        uint8 threshold; // 0: not installed
        bytes32 rotation; // the rotation digest that installed it (0 for the constructor's)
        address[] members;
    }

    uint64 private _epoch;
    mapping(uint64 => Epoch) private _epochs;
    mapping(uint64 => mapping(address => bool)) private _isMember;

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin();
        _;
    }

    modifier onlyRelayer() {
        if (!isRelayer[msg.sender]) revert NotRelayer();
        _;
    }

    /// Guarantees: the committee has 1 <= threshold, 2*threshold > n, members nonzero and
    /// strictly ascending (so distinct), epoch >= 1; reverts InvalidCommittee otherwise.
    constructor(
        bytes32 ledgerId_,
        address admin_,
        address[] memory members,
        uint8 threshold,
        uint64 epoch
    ) {
        if (admin_ == address(0)) revert ZeroAddress();
        ledgerId = ledgerId_;
        admin = admin_;
        _installCommittee(epoch, threshold, members);
    }

    // ------------------------------------------------------------------ administration

    /// Enables or disables `relayer`. Relayers can only submit certified leg transitions
    /// (and locks); they cannot change configuration.
    function setRelayer(address relayer, bool enabled) external override onlyAdmin {
        if (relayer == address(0)) revert ZeroAddress();
        isRelayer[relayer] = enabled;
        emit RelayerSet(relayer, enabled);
    }

    /// Registers (`enabled`) or removes `key` as a brokerage instruction key. Guarantees: only
    /// the admin changes the registry; a relayer's `lock` succeeds only for an instruction
    /// signed by a key registered here at the time of the lock (UnknownInstructor otherwise).
    /// Removing a key does not affect transfers already locked.
    /// SECURITY: without this registry a relayer could name its own key as instructor and
    /// escrow any holder's units towards a ledger no member knows, where nothing releases them.
    function setInstructor(address key, bool enabled) external override onlyAdmin {
        if (key == address(0)) revert ZeroAddress();
        isInstructor[key] = enabled;
        emit InstructorSet(key, enabled);
    }

    /// Binds `securityId` to `token`, once and for all. Guarantees: the token reports the same
    /// security id, and the mapping never changes afterwards (so a prepared transfer always
    /// mints on the token it was checked against).
    function registerSecurity(bytes32 securityId, address token) external override onlyAdmin {
        if (token == address(0)) revert ZeroAddress();
        address existing = tokenOf[securityId];
        if (existing != address(0)) revert SecurityAlreadyRegistered(securityId, existing);
        if (SecurityToken(token).securityId() != securityId) {
            revert SecurityMismatch(securityId, token);
        }
        tokenOf[securityId] = token;
        emit SecurityRegistered(securityId, token);
    }

    /// The latest installed committee (before its activation the previous epoch still
    /// verifies alone: see `committees`).
    function committee()
        external
        view
        override
        returns (uint64 epoch, uint8 threshold, address[] memory members)
    {
        Epoch storage e = _epochs[_epoch];
        return (_epoch, e.threshold, e.members);
    }

    // ------------------------------------------------------------------ source side

    /// Escrows `t.amount` of the sender's units for transfer `transferIdOf(t)`.
    /// Caller: the sender itself (holder-direct; then `t.instructor` must equal `t.sender` and
    /// `instruction` is ignored), or a relayer with `instruction`, a 65-byte signature by
    /// `t.instructor` over `instructionDigestOf(t)`, where `t.instructor` is a registered
    /// instruction key or the sender itself (MissingInstruction / UnknownInstructor /
    /// InvalidInstruction otherwise). Guarantees on success: `t` names this ledger and this contract as source
    /// and another ledger as target, the amount is nonzero, the deadline is in the future, the
    /// security is registered, the id was never used here, and the units now sit in this
    /// contract's token balance (outbound state Locked).
    /// SECURITY: a relayer (or a coordinator driving it) cannot lock units that neither their
    /// holder nor a brokerage instruction key registered by the admin authorised.
    function lock(BridgeTypes.Terms calldata t, bytes calldata instruction)
        external
        override
        returns (bytes32 transferId)
    {
        transferId = BridgeTypes.transferId(t);
        _lock(t, instruction, transferId, BridgeTypes.termsHash(t, transferId));
    }

    /// `lock` after the transfer id and terms hash (shared with `lockBatch`).
    function _lock(
        BridgeTypes.Terms calldata t,
        bytes calldata instruction,
        bytes32 transferId,
        bytes32 hash
    ) private {
        (bool senderOk, address sender) = _evmAddress(t.sender);
        if (senderOk && msg.sender == sender) {
            if (t.instructor != t.sender) revert InvalidInstruction();
        } else if (!isRelayer[msg.sender]) {
            revert NotSender();
        } else {
            _verifyInstruction(t.instructor, t.sender, hash, instruction);
        }
        if (!_isSource(t) || t.dstLedgerId == ledgerId) revert WrongLedger();
        if (t.amount == 0) revert ZeroAmount();
        if (t.deadline <= block.timestamp) revert DeadlinePassed(t.deadline, block.timestamp);
        if (!senderOk) revert InvalidSender(t.sender);
        SecurityToken token = _token(t.securityId);
        _requireNotHalted(t.securityId); // ---- depository halt

        OutLeg storage leg = _out[transferId];
        if (leg.state != OutState.None) revert TransferExists(transferId);

        _flowOut(t.securityId, t.dstLedgerId, transferId, t.amount);
        leg.state = OutState.Locked;
        leg.termsHash = hash;
        leg.amount = t.amount;
        leg.securityId = t.securityId;
        emit TransferLocked(transferId, t.securityId, t, hash);
        _emitOut(transferId, leg);

        token.bridgeEscrow(sender, t.amount);
    }

    /// Finishes a source or target leg with a COMMIT certificate over `t`.
    /// Source (outbound, Locked): burns the escrowed units -> Burned.
    /// Target (inbound, Prepared): mints to the recipient -> Minted.
    /// Guarantees: relayer caller, valid current-epoch COMMIT certificate, the stored terms
    /// hash equals `t`'s, and each leg finishes at most once (anything else is BadState).
    function commit(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata cert)
        external
        override
        onlyRelayer
    {
        bytes32 id = BridgeTypes.transferId(t);
        bytes32 hash = BridgeTypes.termsHash(t, id);
        _verifyCertificate(cert, BridgeTypes.CLAIM_COMMIT, id, hash);
        _commit(t, id, hash);
    }

    /// `commit` after the certificate (shared with `commitBatch`).
    function _commit(BridgeTypes.Terms calldata t, bytes32 id, bytes32 hash) private {
        if (_isSource(t)) {
            OutLeg storage leg = _out[id];
            if (leg.state != OutState.Locked) revert BadState(id, uint8(leg.state));
            if (leg.termsHash != hash) revert TermsMismatch(id);
            _requireDelayOver(_effectiveNotBefore(id, LEG_OUT));
            leg.state = OutState.Burned;
            burnedOut[leg.securityId] += leg.amount;
            _emitOut(id, leg);
            _token(leg.securityId).bridgeBurn(leg.amount);
        } else if (_isTarget(t)) {
            InLeg storage leg = _in[id];
            if (leg.state != InState.Prepared) revert BadState(id, uint8(leg.state));
            if (leg.termsHash != hash) revert TermsMismatch(id);
            _requireNotHalted(leg.securityId); // ---- depository halt: the mint waits
            _requireDelayOver(_effectiveNotBefore(id, LEG_IN));
            _flowCredit(leg.securityId, t.srcLedgerId, FLOW_OUT, leg.amount); // inbound offsets outbound
            leg.state = InState.Minted;
            preparedTotal[leg.securityId] -= leg.amount;
            mintedIn[leg.securityId] += leg.amount;
            (, address recipient) = _evmAddress(t.recipient); // validated at prepare
            SecurityToken token = _token(leg.securityId);
            // SECURITY: COMMIT is final and must not fail; a recipient frozen or made
            // ineligible since prepare is not paid: the units are parked (see `// ---- parking`).
            recipient = _parkIfRefused(id, leg, token, recipient);
            _emitIn(id, leg);
            token.bridgeMint(recipient, leg.amount);
        } else {
            revert WrongLedger();
        }
    }

    /// Finishes a source or target leg with an ABORT certificate over `t`.
    /// Source (Locked): returns the escrow to the sender -> Released.
    /// Target: Prepared, Rejected, Expired or None -> Aborted (None records a tombstone so a
    /// late prepare cannot succeed). Guarantees: relayer caller, valid current-epoch ABORT
    /// certificate, matching terms hash, Burned/Released/Minted/Aborted are final.
    function abort(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata cert)
        external
        override
        onlyRelayer
    {
        bytes32 id = BridgeTypes.transferId(t);
        bytes32 hash = BridgeTypes.termsHash(t, id);
        _verifyCertificate(cert, BridgeTypes.CLAIM_ABORT, id, hash);
        _abort(t, id, hash);
    }

    /// `abort` after the certificate (shared with `abortBatch`).
    function _abort(BridgeTypes.Terms calldata t, bytes32 id, bytes32 hash) private {
        if (_isSource(t)) {
            OutLeg storage leg = _out[id];
            if (leg.state != OutState.Locked) revert BadState(id, uint8(leg.state));
            if (leg.termsHash != hash) revert TermsMismatch(id);
            leg.state = OutState.Released;
            _flowCredit(leg.securityId, t.dstLedgerId, FLOW_OUT, leg.amount); // never left
            _emitOut(id, leg);
            (, address sender) = _evmAddress(t.sender); // validated at lock
            _token(leg.securityId).bridgeRelease(sender, leg.amount);
        } else if (_isTarget(t)) {
            InLeg storage leg = _in[id];
            InState state = leg.state;
            if (state == InState.Minted || state == InState.Aborted) {
                revert BadState(id, uint8(state));
            }
            if (state == InState.None) {
                leg.termsHash = hash;
                leg.amount = t.amount;
                leg.securityId = t.securityId;
            } else if (leg.termsHash != hash) {
                revert TermsMismatch(id);
            }
            if (state == InState.Prepared) {
                preparedTotal[leg.securityId] -= leg.amount;
                _flowCredit(leg.securityId, t.srcLedgerId, FLOW_IN, leg.amount); // never minted
            }
            leg.state = InState.Aborted;
            _emitIn(id, leg);
        } else {
            revert WrongLedger();
        }
    }

    // ------------------------------------------------------------------ target side

    /// Records the target leg of a locked transfer, given a LOCKED certificate.
    /// Guarantees: relayer caller, `t` targets this ledger and contract, no earlier inbound
    /// record, valid current-epoch LOCKED certificate. The outcome is recorded, never
    /// reverted: Prepared (the recipient may receive now; the amount is added to
    /// `preparedTotal`) or Rejected with reason 1 unknown security, 2 not eligible,
    /// 3 frozen, 4 paused, 5 invalid recipient.
    function prepare(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata lockedCert)
        external
        override
        onlyRelayer
    {
        if (!_isTarget(t)) revert WrongLedger();
        if (t.amount == 0) revert ZeroAmount();
        bytes32 id = BridgeTypes.transferId(t);
        InLeg storage leg = _in[id];
        if (leg.state != InState.None) revert BadState(id, uint8(leg.state));
        bytes32 hash = BridgeTypes.termsHash(t, id);
        _verifyCertificate(lockedCert, BridgeTypes.CLAIM_LOCKED, id, hash);
        _prepare(t, id, hash);
    }

    /// `prepare` after the leg check and the certificate (shared with `prepareBatch`).
    function _prepare(BridgeTypes.Terms calldata t, bytes32 id, bytes32 hash) private {
        InLeg storage leg = _in[id];
        _requireNotHalted(t.securityId); // ---- depository halt: refused, not Rejected
        uint8 reason = _receiveCheck(t);

        leg.termsHash = hash;
        leg.amount = t.amount;
        leg.securityId = t.securityId;
        leg.reason = reason;
        if (reason == 0) {
            _flowIn(t.securityId, t.srcLedgerId, id, t.amount);
            leg.state = InState.Prepared;
            preparedTotal[t.securityId] += t.amount;
        } else {
            leg.state = InState.Rejected;
        }
        _emitIn(id, leg);
    }

    /// Records that a locked transfer was not prepared here before its deadline.
    /// Guarantees: relayer caller, `t` targets this ledger and contract, no earlier inbound
    /// record, valid current-epoch LOCKED certificate, and block.timestamp > t.deadline.
    function markExpired(BridgeTypes.Terms calldata t, BridgeTypes.Certificate calldata lockedCert)
        external
        override
        onlyRelayer
    {
        if (!_isTarget(t)) revert WrongLedger();
        bytes32 id = BridgeTypes.transferId(t);
        InLeg storage leg = _in[id];
        if (leg.state != InState.None) revert BadState(id, uint8(leg.state));
        bytes32 hash = BridgeTypes.termsHash(t, id);
        _verifyCertificate(lockedCert, BridgeTypes.CLAIM_LOCKED, id, hash);
        if (block.timestamp <= t.deadline) revert NotExpired(t.deadline, block.timestamp);

        leg.termsHash = hash;
        leg.amount = t.amount;
        leg.securityId = t.securityId;
        leg.state = InState.Expired;
        _emitIn(id, leg);
    }

    // ------------------------------------------------------------------ queries

    /// The outbound (source) leg of `transferId`; state is an OutState value.
    function outbound(bytes32 transferId)
        external
        view
        override
        returns (uint8 state, bytes32 termsHash, uint256 amount, bytes32 securityId)
    {
        OutLeg storage leg = _out[transferId];
        return (uint8(leg.state), leg.termsHash, leg.amount, leg.securityId);
    }

    /// The inbound (target) leg of `transferId`; state is an InState value.
    function inbound(bytes32 transferId)
        external
        view
        override
        returns (uint8 state, bytes32 termsHash, uint256 amount, bytes32 securityId, uint8 reason)
    {
        InLeg storage leg = _in[transferId];
        return (uint8(leg.state), leg.termsHash, leg.amount, leg.securityId, leg.reason);
    }

    /// Supply figures of `securityId` at this block: the registered token's `totalSupply`,
    /// the bridge's escrow (`token.balanceOf(this)` less the parked units, which are not in
    /// transit: their transfer committed), `preparedTotal`, and the cumulative
    /// `burnedOut` and `mintedIn`. What was issued on this ledger outside the bridge is
    /// `totalSupply + burnedOut - mintedIn`. Reverts UnknownSecurity for an unregistered id.
    function supplyOf(bytes32 securityId)
        external
        view
        override
        returns (
            uint256 totalSupply,
            uint256 escrowed,
            uint256 prepared,
            uint256 burned,
            uint256 minted
        )
    {
        SecurityToken token = _token(securityId);
        return (
            token.totalSupply(),
            token.balanceOf(address(this)) - parkedTotal[securityId], // parked units are not escrow
            preparedTotal[securityId],
            burnedOut[securityId],
            mintedIn[securityId]
        );
    }

    /// `BridgeTypes.transferId(t)`.
    function transferIdOf(BridgeTypes.Terms calldata t) external pure override returns (bytes32) {
        return BridgeTypes.transferId(t);
    }

    /// `BridgeTypes.termsHash(t, transferIdOf(t))`.
    function termsHashOf(BridgeTypes.Terms calldata t) external pure override returns (bytes32) {
        return BridgeTypes.termsHash(t, BridgeTypes.transferId(t));
    }

    /// The digest a committee member of `epoch` signs for a claim this contract verifies.
    function claimDigestOf(uint64 epoch, uint8 kind, bytes32 transferId, bytes32 termsHash)
        external
        view
        override
        returns (bytes32)
    {
        return BridgeTypes.claimDigest(
            _network(), ledgerId, _selfWord(), epoch, kind, transferId, termsHash
        );
    }

    /// `BridgeTypes.claimDigest` for any domain.
    function claimDigestFor(
        bytes32 network,
        bytes32 ledger,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 transferId,
        bytes32 termsHash
    ) external pure override returns (bytes32) {
        return BridgeTypes.claimDigest(network, ledger, bridge, epoch, kind, transferId, termsHash);
    }

    /// The digest `t.instructor` signs to instruct a relayer's lock of `t` here.
    function instructionDigestOf(BridgeTypes.Terms calldata t)
        external
        view
        override
        returns (bytes32)
    {
        return BridgeTypes.instructionDigest(
            _network(), BridgeTypes.termsHash(t, BridgeTypes.transferId(t))
        );
    }

    /// `BridgeTypes.instructionDigest` for any network.
    function instructionDigestFor(bytes32 network, bytes32 termsHash)
        external
        pure
        override
        returns (bytes32)
    {
        return BridgeTypes.instructionDigest(network, termsHash);
    }

    /// `bytes32(block.chainid)`: the network word bound into claim and instruction digests.
    function networkWord() external view override returns (bytes32) {
        return _network();
    }

    // ---- admin
    // Two-step admin rotation: the current admin proposes, the proposed address accepts.
    // Proposing address(0) cancels a pending proposal. The admin never becomes address(0).

    /// The address proposed by `proposeAdmin` and not yet accepted (0 = none).
    address public override pendingAdmin;

    /// Proposes `next` as the new admin (address(0) cancels). Guarantees: only the current
    /// admin; the admin does not change until `next` calls `acceptAdmin`.
    function proposeAdmin(address next) external override onlyAdmin {
        pendingAdmin = next;
        emit AdminProposed(admin, next);
    }

    /// Makes the caller the admin. Guarantees: the caller is the pending admin
    /// (NotPendingAdmin otherwise, also when none is pending); the old admin loses every right
    /// in the same transaction, and the proposal is consumed.
    function acceptAdmin() external override {
        address next = pendingAdmin;
        if (msg.sender != next || next == address(0)) revert NotPendingAdmin(msg.sender);
        emit AdminTransferred(admin, next);
        admin = next;
        pendingAdmin = address(0);
    }

    // ---- parking
    // A recipient frozen or made ineligible after its leg was prepared is not paid at commit:
    // the units are minted to this endpoint and recorded per transfer; only the token's admin
    // (the issuer) can deliver them, and only to a holder who may receive. The leg is Minted
    // (COMMIT is the decision; it never fails here) with `reason` = 2 not eligible or 3 frozen.

    /// Units parked by each committed inbound leg, until `releaseParked` (then 0).
    mapping(bytes32 => uint256) public override parked;
    /// Units parked and not yet released, per security (held by this endpoint, part of the
    /// token's total supply, not escrow).
    mapping(bytes32 => uint256) public override parkedTotal;

    /// Delivers the units parked by transfer `transferId` to `to`. Guarantees: the caller is
    /// the admin of the security's token (NotTokenAdmin), units are parked for the transfer
    /// (NotParked: also after a release, so never twice), `to` may receive them now
    /// (RecipientRefused with the token's receive status otherwise: not eligible, frozen or
    /// paused) and is not this endpoint.
    function releaseParked(bytes32 transferId, address to) external override {
        uint256 amount = parked[transferId];
        if (amount == 0) revert NotParked(transferId);
        bytes32 securityId = _in[transferId].securityId;
        SecurityToken token = _token(securityId);
        if (msg.sender != token.admin()) revert NotTokenAdmin(msg.sender);
        if (to == address(0) || to == address(this)) {
            revert RecipientRefused(to, REASON_INVALID_RECIPIENT);
        }
        uint8 status = token.receiveStatus(to);
        if (status != 0) revert RecipientRefused(to, status);
        parked[transferId] = 0;
        parkedTotal[securityId] -= amount;
        emit ParkedReleased(transferId, securityId, to, amount);
        token.bridgeRelease(to, amount);
    }

    /// Decides at commit where the units of the Prepared leg `id` go: to `recipient`, or, when
    /// the token now refuses it (not eligible, frozen; a pause is not a verdict on the
    /// recipient and does not park), to this endpoint, recording the parking and the reason.
    function _parkIfRefused(bytes32 id, InLeg storage leg, SecurityToken token, address recipient)
        private
        returns (address)
    {
        uint8 reason;
        if (!token.isEligible(recipient)) reason = 2;
        else if (token.isFrozen(recipient)) reason = 3;
        else return recipient;
        leg.reason = reason;
        parked[id] = leg.amount;
        parkedTotal[leg.securityId] += leg.amount;
        emit Parked(id, leg.securityId, recipient, leg.amount, reason);
        return address(this);
    }

    // ---- committee rotation (ADR 0008)

    /// Longest overlap a rotation may ask for (the old keys stay usable that long).
    uint64 private constant MAX_OVERLAP = 30 days;
    /// Latest activation a rotation may name, after its installation.
    uint256 private constant MAX_ACTIVATION_DELAY = 30 days;

    /// Installs committee `nextEpoch` (`threshold` of `members`, verifying from `activation`)
    /// with a certificate of `epoch` over `BridgeTypes.rotationDigest` for this endpoint.
    /// Anyone may call: the certificate is the authority. Checks, in order (the protocol
    /// core's `epochs.check_rotation`, then its certificate rule): RotationAlreadyInstalled
    /// (this very rotation is installed), EpochAlreadyInstalled (another committee holds
    /// `nextEpoch`), InvalidRotation (nextEpoch != epoch + 1), WrongEpoch (`epoch` is not the
    /// latest installed epoch), EpochNotActive (it is not active yet), InvalidRotation
    /// (overlap not in 1..30 days, activation more than 30 days ahead), InvalidCommittee
    /// (not 1 <= t <= n < 2t, members nonzero strictly ascending), then the certificate of
    /// `epoch` (WrongEpoch unless cert.epoch == epoch, MalformedSignatures, TooFewSignatures,
    /// InvalidSignature, SignersNotAscending, NotCommitteeMember).
    /// Guarantees on success: `epoch` verifies until max(activation, now) + overlap,
    /// `nextEpoch` from `activation` on, `epoch - 1` no longer verifies.
    /// SECURITY: only t members of the latest active committee can change the committee.
    function rotateCommittee(
        uint64 epoch,
        uint64 nextEpoch,
        uint8 threshold,
        address[] calldata members,
        uint64 activation,
        uint64 overlap,
        BridgeTypes.Certificate calldata cert
    ) external override {
        bytes32 digest = BridgeTypes.rotationDigest(
            _network(), ledgerId, _selfWord(), epoch, nextEpoch, threshold, members, activation, overlap
        );
        Epoch storage current = _checkRotation(epoch, nextEpoch, activation, overlap, digest);
        _checkRotatedCommittee(threshold, members);
        if (cert.epoch != epoch) revert WrongEpoch(cert.epoch, epoch);
        _checkSignatures(cert.signatures, epoch, current.threshold, digest);

        uint64 until =
            (activation > block.timestamp ? activation : uint64(block.timestamp)) + overlap;
        current.activeUntil = until;
        _installRotated(nextEpoch, threshold, members, activation, digest);
        emit CommitteeRotated(epoch, nextEpoch, activation, until);
    }

    /// The checks of `rotateCommittee` before the committee and the certificate; returns the
    /// rotating (latest) epoch.
    function _checkRotation(
        uint64 epoch,
        uint64 nextEpoch,
        uint64 activation,
        uint64 overlap,
        bytes32 digest
    ) private view returns (Epoch storage current) {
        Epoch storage next = _epochs[nextEpoch];
        if (next.threshold != 0) {
            if (next.rotation == digest) revert RotationAlreadyInstalled(nextEpoch);
            revert EpochAlreadyInstalled(nextEpoch);
        }
        if (uint256(nextEpoch) != uint256(epoch) + 1) revert InvalidRotation();
        uint64 latest = _epoch;
        if (epoch != latest) revert WrongEpoch(epoch, latest);
        current = _epochs[epoch];
        if (block.timestamp < current.activeFrom) {
            revert EpochNotActive(epoch, current.activeFrom);
        }
        if (
            overlap == 0 || overlap > MAX_OVERLAP
                || activation > block.timestamp + MAX_ACTIVATION_DELAY
        ) revert InvalidRotation();
    }

    /// Records committee `nextEpoch` as the latest epoch, verifying from `activation`.
    function _installRotated(
        uint64 nextEpoch,
        uint8 threshold,
        address[] calldata members,
        uint64 activation,
        bytes32 digest
    ) private {
        Epoch storage next = _epochs[nextEpoch];
        next.activeFrom = activation;
        next.threshold = threshold;
        next.rotation = digest;
        next.members = members;
        for (uint256 i = 0; i < members.length; ++i) {
            _isMember[nextEpoch][members[i]] = true;
        }
        _epoch = nextEpoch;
    }

    /// The latest installed epoch and, while its window lasts at this block, the one before
    /// it, ascending by epoch: every epoch whose certificates verify now or will.
    function committees() external view override returns (CommitteeWindow[] memory windows) {
        uint64 latest = _epoch;
        Epoch storage prev = _epochs[latest - 1];
        bool withPrev = prev.threshold != 0
            && (prev.activeUntil == 0 || block.timestamp < prev.activeUntil);
        windows = new CommitteeWindow[](withPrev ? 2 : 1);
        if (withPrev) windows[0] = _window(latest - 1, prev);
        windows[withPrev ? 1 : 0] = _window(latest, _epochs[latest]);
    }

    /// `BridgeTypes.rotationDigest` for any domain.
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
    ) external pure override returns (bytes32) {
        return BridgeTypes.rotationDigest(
            network, ledger, bridge, epoch, nextEpoch, threshold, members, activation, overlap
        );
    }

    /// The installed epoch whose certificate verifies now: the latest from its activation on
    /// (EpochNotActive before), the previous one before its `activeUntil` (WrongEpoch after),
    /// no other (WrongEpoch). The protocol core's `epochs.verifying_epoch`.
    function _verifyingEpoch(uint64 epoch) private view returns (Epoch storage e) {
        uint64 latest = _epoch;
        e = _epochs[epoch];
        if (epoch == latest) {
            if (block.timestamp < e.activeFrom) revert EpochNotActive(epoch, e.activeFrom);
        } else if (
            epoch != latest - 1 || e.threshold == 0
                || (e.activeUntil != 0 && block.timestamp >= e.activeUntil)
        ) {
            revert WrongEpoch(epoch, latest);
        }
    }

    /// InvalidCommittee unless 1 <= threshold <= n < 2 * threshold and the members are
    /// nonzero and strictly ascending (the core's `epochs.check_committee`).
    function _checkRotatedCommittee(uint8 threshold, address[] calldata members) private pure {
        uint256 n = members.length;
        if (threshold == 0 || threshold > n || 2 * uint256(threshold) <= n) {
            revert InvalidCommittee();
        }
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            if (members[i] <= previous) revert InvalidCommittee();
            previous = members[i];
        }
    }

    function _window(uint64 epoch, Epoch storage e) private view returns (CommitteeWindow memory) {
        return CommitteeWindow(epoch, e.threshold, e.activeFrom, e.activeUntil, e.members);
    }

    // ---- flow limits (ADR 0010)
    //
    // A lane is (security, counterpart ledger). Each limited lane has four lazily refilled
    // token buckets: outbound and inbound capacity (capacity C, refilled C per `window`), and
    // outbound and inbound large-transfer allowance (capacity `largeThreshold`, refilled
    // `largeThreshold` per `largeDelay`). A bucket's level is kept in unit-seconds (units x
    // refill period), so refilling is exact integer arithmetic with no rounding drift.

    uint8 private constant FLOW_OUT = 0;
    uint8 private constant FLOW_IN = 1;
    uint8 private constant FLOW_LARGE_OUT = 2;
    uint8 private constant FLOW_LARGE_IN = 3;
    uint256 private constant BPS = 10_000;
    /// Longest `window` / `largeDelay` (review finding 3): a limit cannot park a leg for
    /// longer, and `timestamp + largeDelay` never overflows uint64.
    uint64 private constant MAX_FLOW_PERIOD = 30 days;

    struct FlowLimit {
        uint128 outCapacity; // 0: outbound not rate-limited
        uint128 inCapacity; // 0: inbound not rate-limited
        uint128 largeThreshold; // 0: no large-transfer delay
        uint64 window;
        uint64 largeDelay;
        uint16 shareBps; // nonzero: both capacities were sized from the supply at setFlowLimit
    }

    struct Bucket {
        uint192 level; // unit-seconds: available units x refill period
        uint64 updated; // block.timestamp the level was computed at
    }

    mapping(bytes32 => mapping(bytes32 => FlowLimit)) private _flowLimit;
    mapping(bytes32 => mapping(bytes32 => mapping(uint8 => Bucket))) private _bucket;
    /// A delayed leg: earliest commit time when delayed (`at`), when (`since`) and on which
    /// lane, so that commit enforces min(at, since + the lane's current largeDelay).
    struct Delay {
        uint64 at;
        uint64 since;
        bytes32 lane;
    }

    /// transfer id => leg (LEG_OUT / LEG_IN) => its delay (at 0: none).
    mapping(bytes32 => mapping(uint8 => Delay)) private _delay;

    /// Sets (or, all zero, removes) the flow limit of the lane (`securityId`, `counterpart`).
    /// Guarantees: admin only; the security is registered; `counterpart` is another ledger;
    /// rate limit iff `window` != 0, then each nonzero capacity limits its direction (0 =
    /// that direction unlimited); with `shareBps` (1..10000) both capacities must be passed as
    /// 0 and are set to floor(totalSupply x shareBps / 10000) of this ledger's token at this
    /// block (the registered supply snapshot; reverts InvalidFlowLimit if that is 0); a
    /// large-transfer delay iff `largeThreshold` != 0, which needs `largeDelay` != 0 and the
    /// reverse. Buckets keep what they held (refilled under the old limit), clamped to the new
    /// capacities; a newly limited bucket starts full.
    function setFlowLimit(
        bytes32 securityId,
        bytes32 counterpart,
        uint128 outboundCapacity,
        uint128 inboundCapacity,
        uint64 window,
        uint16 shareBps,
        uint128 largeThreshold,
        uint64 largeDelay
    ) external override onlyAdmin {
        SecurityToken token = _token(securityId);
        if (counterpart == ledgerId) revert WrongLedger();
        if (shareBps != 0) {
            if (shareBps > BPS || outboundCapacity != 0 || inboundCapacity != 0) {
                revert InvalidFlowLimit();
            }
            uint256 sized = token.totalSupply() * shareBps / BPS;
            if (sized == 0 || sized > type(uint128).max) revert InvalidFlowLimit();
            outboundCapacity = uint128(sized);
            inboundCapacity = uint128(sized);
        }
        if (window > MAX_FLOW_PERIOD || largeDelay > MAX_FLOW_PERIOD) revert InvalidFlowLimit();
        bool rated = outboundCapacity != 0 || inboundCapacity != 0;
        if ((window != 0) != rated || (largeThreshold != 0) != (largeDelay != 0)) {
            revert InvalidFlowLimit();
        }
        FlowLimit memory next = FlowLimit(
            outboundCapacity, inboundCapacity, largeThreshold, window, largeDelay, shareBps
        );
        for (uint8 kind = 0; kind < 4; ++kind) {
            _rebase(securityId, counterpart, kind, next);
        }
        _flowLimit[securityId][counterpart] = next;
        emit FlowLimitSet(
            securityId,
            counterpart,
            outboundCapacity,
            inboundCapacity,
            window,
            shareBps,
            largeThreshold,
            largeDelay
        );
    }

    /// The lane's limit and its buckets at this block, in units: [window, outCapacity,
    /// outAvailable, inCapacity, inAvailable, shareBps, largeThreshold, largeDelay,
    /// largeOutAvailable, largeInAvailable]. A capacity of 0 means that direction is not
    /// limited (its available figure is then 0 and meaningless).
    function flowStatus(bytes32 securityId, bytes32 counterpart)
        external
        view
        override
        returns (uint256[10] memory s)
    {
        FlowLimit memory f = _flowLimit[securityId][counterpart];
        s[0] = f.window;
        s[1] = f.outCapacity;
        s[2] = _available(securityId, counterpart, FLOW_OUT, f);
        s[3] = f.inCapacity;
        s[4] = _available(securityId, counterpart, FLOW_IN, f);
        s[5] = f.shareBps;
        s[6] = f.largeThreshold;
        s[7] = f.largeDelay;
        s[8] = _available(securityId, counterpart, FLOW_LARGE_OUT, f);
        s[9] = _available(securityId, counterpart, FLOW_LARGE_IN, f);
    }

    /// When the outbound and inbound legs of `transferId` may commit here (0: no delay): the
    /// effective values commit enforces (see `_effectiveNotBefore`).
    function notBefore(bytes32 transferId)
        external
        view
        override
        returns (uint64 outboundAt, uint64 inboundAt)
    {
        return (_effectiveNotBefore(transferId, LEG_OUT), _effectiveNotBefore(transferId, LEG_IN));
    }

    /// SECURITY (review finding 3): min(stored notBefore, delayed-at + the lane's CURRENT
    /// largeDelay), so lowering or removing a lane's delay shortens legs already delayed.
    function _effectiveNotBefore(bytes32 id, uint8 legKind) private view returns (uint64) {
        Delay memory d = _delay[id][legKind];
        if (d.at == 0) return 0;
        bytes32 sec = legKind == LEG_OUT ? _out[id].securityId : _in[id].securityId;
        uint64 shorter = d.since + _flowLimit[sec][d.lane].largeDelay; // both bounded: no overflow
        return shorter < d.at ? shorter : d.at;
    }

    /// Lock hook. SECURITY: consumes outbound capacity or reverts FlowLimitExceeded (nothing
    /// escrowed); a lock beyond the lane's large allowance gets a notBefore.
    function _flowOut(bytes32 sec, bytes32 lane, bytes32 id, uint256 amount) private {
        _flowTake(sec, lane, id, amount, FLOW_OUT, FLOW_LARGE_OUT, LEG_OUT);
    }

    /// Prepare hook (only for a leg that would be Prepared): like `_flowOut`, inbound.
    /// Over capacity it REVERTS rather than recording a rejection: the coordinator retries
    /// while the lane refills, and the deadline's Expired marker (which consumes nothing)
    /// still ends the transfer, so the escrow is released at the latest after the deadline.
    function _flowIn(bytes32 sec, bytes32 lane, bytes32 id, uint256 amount) private {
        _flowTake(sec, lane, id, amount, FLOW_IN, FLOW_LARGE_IN, LEG_IN);
    }

    function _flowTake(
        bytes32 sec,
        bytes32 lane,
        bytes32 id,
        uint256 amount,
        uint8 rateKind,
        uint8 largeKind,
        uint8 legKind
    ) private {
        FlowLimit storage stored = _flowLimit[sec][lane];
        uint256 cap = rateKind == FLOW_OUT ? stored.outCapacity : stored.inCapacity;
        if (cap == 0 && stored.largeThreshold == 0) return; // an unlimited lane: two reads
        FlowLimit memory f = stored;
        if (cap != 0) {
            uint256 level = _level(sec, lane, rateKind, f);
            // amount <= cap < 2^128 before multiplying: no overflow for any amount
            if (amount > cap || amount * f.window > level) {
                revert FlowLimitExceeded(level / f.window, amount);
            }
            uint256 need = amount * f.window;
            _store(sec, lane, rateKind, level - need);
        }
        if (f.largeThreshold != 0) {
            uint256 level = _level(sec, lane, largeKind, f);
            uint256 need = amount > f.largeThreshold ? type(uint256).max : amount * f.largeDelay;
            // SECURITY: the allowance is the lane's, not the sender's, and it refills only
            // with time: however a large amount is split, at most `largeThreshold` per
            // `largeDelay` passes undelayed. A leg beyond it waits, and empties the allowance.
            if (need > level) {
                uint64 at = uint64(block.timestamp) + f.largeDelay;
                _delay[id][legKind] = Delay(at, uint64(block.timestamp), lane);
                emit TransferDelayed(id, legKind, at);
                need = level;
            }
            _store(sec, lane, largeKind, level - need);
        }
    }

    /// Gives `amount` back to a rate bucket (bounded by its capacity): a release or an abort
    /// of a prepared leg (the units never moved), or an inbound mint offsetting outbound.
    function _flowCredit(bytes32 sec, bytes32 lane, uint8 kind, uint256 amount) private {
        FlowLimit storage stored = _flowLimit[sec][lane];
        uint256 cap = kind == FLOW_OUT ? stored.outCapacity : stored.inCapacity;
        if (cap == 0) return;
        FlowLimit memory f = stored;
        uint256 full = cap * f.window;
        uint256 level = amount >= cap ? full : _level(sec, lane, kind, f) + amount * f.window;
        _store(sec, lane, kind, level < full ? level : full);
    }

    function _requireDelayOver(uint64 at) private view {
        if (block.timestamp < at) revert TooEarly(at, block.timestamp);
    }

    function _params(FlowLimit memory f, uint8 kind)
        private
        pure
        returns (uint256 cap, uint256 period)
    {
        if (kind == FLOW_OUT) return (f.outCapacity, f.window);
        if (kind == FLOW_IN) return (f.inCapacity, f.window);
        return (f.largeThreshold, f.largeDelay);
    }

    /// The bucket's exact level now in unit-seconds (refilled since its update, capped at
    /// capacity x period); 0 for a bucket that is not limited.
    function _level(bytes32 sec, bytes32 lane, uint8 kind, FlowLimit memory f)
        private
        view
        returns (uint256)
    {
        (uint256 cap, uint256 period) = _params(f, kind);
        if (cap == 0) return 0;
        Bucket memory b = _bucket[sec][lane][kind];
        uint256 full = cap * period;
        uint256 level = uint256(b.level) + cap * (block.timestamp - b.updated);
        return level < full ? level : full;
    }

    /// Whole units in the bucket now.
    function _available(bytes32 sec, bytes32 lane, uint8 kind, FlowLimit memory f)
        private
        view
        returns (uint256)
    {
        (, uint256 period) = _params(f, kind);
        uint256 level = _level(sec, lane, kind, f);
        return level == 0 ? 0 : level / period;
    }

    function _store(bytes32 sec, bytes32 lane, uint8 kind, uint256 level) private {
        _bucket[sec][lane][kind] = Bucket(uint192(level), uint64(block.timestamp));
    }

    /// Re-expresses a bucket under the limit `next`: the whole units it holds now (a bucket
    /// that was not limited counts as full), clamped to the new capacity. (A fraction of a
    /// unit still refilling is dropped here, at an admin change only.)
    function _rebase(bytes32 sec, bytes32 lane, uint8 kind, FlowLimit memory next) private {
        (uint256 cap, uint256 period) = _params(next, kind);
        if (cap == 0) return;
        FlowLimit memory f = _flowLimit[sec][lane];
        (uint256 oldCap,) = _params(f, kind);
        uint256 units = oldCap == 0 ? cap : _available(sec, lane, kind, f);
        _store(sec, lane, kind, (units < cap ? units : cap) * period);
    }

    // ------------------------------------------------------------------ internals

    /// The rotation seam: validates and installs the committee of `epoch`.
    function _installCommittee(uint64 epoch, uint8 threshold, address[] memory members) internal {
        uint256 n = members.length;
        if (epoch == 0 || threshold == 0 || 2 * uint256(threshold) <= n) revert InvalidCommittee();
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            if (members[i] <= previous) revert InvalidCommittee(); // also rejects address(0)
            previous = members[i];
            _isMember[epoch][members[i]] = true;
        }
        _epoch = epoch;
        Epoch storage e = _epochs[epoch];
        e.threshold = threshold;
        e.members = members;
    }

    /// Reverts unless `cert` holds >= threshold valid signatures over the claim digest of
    /// (`kind`, `id`, `hash`) for this ledger, this contract and `cert.epoch`, an epoch that
    /// verifies now (`_verifyingEpoch`), from distinct members in strictly ascending order.
    function _verifyCertificate(
        BridgeTypes.Certificate calldata cert,
        uint8 kind,
        bytes32 id,
        bytes32 hash
    ) internal view {
        uint64 epoch = cert.epoch;
        uint8 threshold = _verifyingEpoch(epoch).threshold;
        bytes32 digest =
            BridgeTypes.claimDigest(_network(), ledgerId, _selfWord(), epoch, kind, id, hash);
        _checkSignatures(cert.signatures, epoch, threshold, digest);
    }

    /// The certificate rule after the epoch check: the signatures split into 65-byte parts,
    /// at least `threshold` of them, each valid over `digest`, signers strictly ascending and
    /// members of `epoch`.
    function _checkSignatures(
        bytes calldata sigs,
        uint64 epoch,
        uint8 threshold,
        bytes32 digest
    ) private view {
        if (sigs.length % SIGNATURE_LENGTH != 0) revert MalformedSignatures();
        uint256 count = sigs.length / SIGNATURE_LENGTH;
        if (count < threshold) revert TooFewSignatures(count, threshold);
        address previous = address(0);
        for (uint256 i = 0; i < count; ++i) {
            uint256 at = i * SIGNATURE_LENGTH;
            address signer = _recover(digest, sigs[at:at + SIGNATURE_LENGTH], i);
            if (signer <= previous) revert SignersNotAscending(i);
            if (!_isMember[epoch][signer]) revert NotCommitteeMember(signer);
            previous = signer;
        }
    }

    /// Reverts MissingInstruction for an empty `instruction`, UnknownInstructor unless
    /// `instructor` is an address registered with `setInstructor` (or is the `sender`
    /// itself: the holder instructing its own lock), InvalidInstruction unless
    /// `instruction` is a valid signature (committee rules) by that address over
    /// `instructionDigest(network, hash)`.
    function _verifyInstruction(
        bytes32 instructor,
        bytes32 sender,
        bytes32 hash,
        bytes calldata instruction
    ) private view {
        if (instruction.length == 0) revert MissingInstruction();
        (bool ok, address expected) = _evmAddress(instructor);
        // SECURITY: only the admin's registered brokerage keys (or the holder itself, signing
        // as the instructor of its own lock) may instruct a relayer's lock.
        if (!ok || (instructor != sender && !isInstructor[expected])) {
            revert UnknownInstructor(instructor);
        }
        if (instruction.length != SIGNATURE_LENGTH) revert InvalidInstruction();
        bytes32 digest = BridgeTypes.instructionDigest(_network(), hash);
        bytes32 r = bytes32(instruction[0:32]);
        bytes32 s = bytes32(instruction[32:64]);
        uint8 v = uint8(instruction[64]);
        if (uint256(s) > HALF_CURVE_ORDER || (v != 27 && v != 28)) revert InvalidInstruction();
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0) || signer != expected) revert InvalidInstruction();
    }

    function _network() private view returns (bytes32) {
        return bytes32(block.chainid);
    }

    /// ecrecover over the raw digest (no eth_sign prefix), refusing high-s and bad v.
    function _recover(bytes32 digest, bytes calldata sig, uint256 index)
        private
        pure
        returns (address signer)
    {
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (uint256(s) > HALF_CURVE_ORDER || (v != 27 && v != 28)) revert InvalidSignature(index);
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature(index);
    }

    /// The Prepared/Rejected decision: 0, or the rejection reason.
    function _receiveCheck(BridgeTypes.Terms calldata t) private view returns (uint8) {
        address token = tokenOf[t.securityId];
        // review finding 9: an endpoint that is no longer its token's bridge could never
        // mint: Rejected (unknown security here), so the source releases instead of burning.
        if (token == address(0) || SecurityToken(token).bridge() != address(this)) {
            return REASON_UNKNOWN_SECURITY;
        }
        (bool ok, address recipient) = _evmAddress(t.recipient);
        if (!ok) return REASON_INVALID_RECIPIENT;
        return SecurityToken(token).receiveStatus(recipient);
    }

    function _isSource(BridgeTypes.Terms calldata t) private view returns (bool) {
        return t.srcLedgerId == ledgerId && t.srcBridge == _selfWord();
    }

    function _isTarget(BridgeTypes.Terms calldata t) private view returns (bool) {
        return t.dstLedgerId == ledgerId && t.dstBridge == _selfWord();
    }

    function _selfWord() private view returns (bytes32) {
        return bytes32(uint256(uint160(address(this))));
    }

    function _token(bytes32 securityId) private view returns (SecurityToken) {
        address token = tokenOf[securityId];
        if (token == address(0)) revert UnknownSecurity(securityId);
        return SecurityToken(token);
    }

    /// (true, a) when `word` is a nonzero EVM address left-padded with zero bytes.
    function _evmAddress(bytes32 word) private pure returns (bool ok, address a) {
        if (uint256(word) >> 160 != 0) return (false, address(0));
        a = address(uint160(uint256(word)));
        ok = a != address(0);
    }

    function _emitOut(bytes32 id, OutLeg storage leg) private {
        emit LegStateChanged(
            id, leg.securityId, LEG_OUT, uint8(leg.state), 0, leg.termsHash, leg.amount
        );
    }

    function _emitIn(bytes32 id, InLeg storage leg) private {
        emit LegStateChanged(
            id, leg.securityId, LEG_IN, uint8(leg.state), leg.reason, leg.termsHash, leg.amount
        );
    }

    // ---- depository halt
    //
    // The depository (a secp256k1 key) halts or releases one security or the whole ledger
    // by a signed order (BridgeTypes.Order). While a security or the ledger is halted here:
    // no lock, no prepare and no mint (target commit) of it; burns, releases, aborts and the
    // Expired marker still work so that in-flight transfers can finish or abort.

    /// The depository's key (address(0): none yet).
    address public override depository;
    /// The sequence of the last order applied here (orders must carry a greater one).
    uint64 private _orderSequence;
    /// Halt flags per security word; the zero word halts every security of this ledger.
    mapping(bytes32 => bool) private _halted;

    /// Sets the depository key. Guarantees: admin only, once, while no key is set.
    /// SECURITY: the admin cannot replace the key afterwards (it could otherwise lift a halt
    /// with a key of its own); only an order signed by the current key replaces it.
    function setDepository(address key) external override onlyAdmin {
        if (key == address(0)) revert ZeroAddress();
        if (depository != address(0)) revert DepositoryAlreadySet(depository);
        depository = key;
        emit DepositorySet(key);
    }

    /// Applies a depository order. Guarantees, checked in the protocol core's order
    /// (`bridge.core.signatures.check_order`): a depository key is set (NoDepository); the
    /// action is 1-3 and `key` is an address word exactly for a key change, which names no
    /// security (InvalidOrder); the order is for this network and this ledger or every
    /// ledger (WrongLedger); block.timestamp < expiry (OrderExpired); its sequence is above
    /// the last one applied here (StaleOrder); the signature follows the committee rules
    /// (InvalidSignature(0)) and recovers to the depository (NotDepository).
    /// SECURITY: only the depository's signature halts, releases or replaces its key.
    function applyOrder(BridgeTypes.Order calldata o, bytes calldata signature) external override {
        address current = depository;
        if (current == address(0)) revert NoDepository();
        uint8 action = o.action;
        bool keyChange = action == BridgeTypes.ORDER_SET_DEPOSITORY;
        if (action == 0 || action > BridgeTypes.ORDER_SET_DEPOSITORY) revert InvalidOrder();
        if (keyChange != (o.key != bytes32(0))) revert InvalidOrder();
        if (keyChange && (uint256(o.key) >> 160 != 0 || o.securityId != bytes32(0))) {
            revert InvalidOrder();
        }
        if (o.network != _network()) revert WrongLedger();
        if (o.ledgerId != bytes32(0) && o.ledgerId != ledgerId) revert WrongLedger();
        if (block.timestamp >= o.expiry) revert OrderExpired(o.expiry, block.timestamp);
        if (o.sequence <= _orderSequence) revert StaleOrder(o.sequence, _orderSequence);
        if (signature.length != SIGNATURE_LENGTH) revert InvalidSignature(0);
        address signer = _recover(BridgeTypes.orderDigest(o), signature, 0);
        if (signer != current) revert NotDepository(signer);

        _orderSequence = o.sequence;
        if (keyChange) {
            depository = address(uint160(uint256(o.key)));
            emit DepositorySet(depository);
        } else {
            _halted[o.securityId] = action == BridgeTypes.ORDER_HALT;
        }
        emit DepositoryOrder(o.sequence, action, o.securityId, o.key);
    }

    /// Whether `securityId` is halted here, whether the whole ledger is, and the last order
    /// sequence applied.
    function haltStatus(bytes32 securityId)
        external
        view
        override
        returns (bool securityHalted, bool ledgerHalted, uint64 sequence)
    {
        return (_halted[securityId], _halted[bytes32(0)], _orderSequence);
    }

    /// `BridgeTypes.orderDigest(o)`.
    function orderDigestOf(BridgeTypes.Order calldata o) external pure override returns (bytes32) {
        return BridgeTypes.orderDigest(o);
    }

    function _requireNotHalted(bytes32 securityId) private view {
        if (_halted[securityId] || _halted[bytes32(0)]) revert SecurityHalted(securityId);
    }

    // ---- batched steps (ADR 0025)
    //
    // One batch certificate per call (one signature check), then per item only its Merkle
    // proof. Each item goes through exactly the single step's logic (`_lock`, `_prepare`,
    // `_commit`, `_abort`), so it reaches exactly one final state; an item already where the
    // step would put it is skipped with `BatchItemSkipped` (a replayed batch applies
    // nothing twice). A bad proof, a wrong kind, epoch, ledger or endpoint, a duplicated
    // item or any refusal of a single step reverts the whole call: the relayer simulates
    // first and drops the items that would fail.

    /// Transient-storage slot offset marking the items seen in the current call.
    bytes32 private constant BATCH_SEEN = keccak256("KSTB/batch-seen");

    /// Many locks, each exactly as `lock` (caller: the holder or a relayer with the item's
    /// instruction). An item whose outbound leg is already recorded with the same terms is
    /// skipped. Reverts InvalidBatch (no item, not one instruction per item),
    /// DuplicateBatchItem, or any refusal of `lock`.
    function lockBatch(BridgeTypes.Terms[] calldata ts, bytes[] calldata instructions)
        external
        override
    {
        uint256 n = ts.length;
        if (n == 0 || instructions.length != n) revert InvalidBatch();
        bytes32[] memory ids = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            BridgeTypes.Terms calldata t = ts[i];
            bytes32 id = BridgeTypes.transferId(t);
            bytes32 hash = BridgeTypes.termsHash(t, id);
            _markSeen(id, i);
            ids[i] = id;
            OutLeg storage leg = _out[id];
            if (leg.state != OutState.None && leg.termsHash == hash) {
                emit BatchItemSkipped(id, LEG_OUT, uint8(leg.state));
            } else {
                _lock(t, instructions[i], id, hash);
            }
        }
        _clearSeen(ids);
    }

    /// Many prepares under one LOCKED batch certificate (see `_batch`); each item is Prepared
    /// or Rejected on its own, as `prepare`; an inbound leg already recorded is skipped.
    function prepareBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external override onlyRelayer {
        _batch(ts, proofs, cert, BridgeTypes.CLAIM_LOCKED);
    }

    /// Many commits (either leg, as `commit`) under one COMMIT batch certificate; a leg
    /// already Burned or Minted is skipped.
    function commitBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external override onlyRelayer {
        _batch(ts, proofs, cert, BridgeTypes.CLAIM_COMMIT);
    }

    /// Many aborts (either leg, as `abort`) under one ABORT batch certificate; a leg already
    /// Released or Aborted is skipped.
    function abortBatch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert
    ) external override onlyRelayer {
        _batch(ts, proofs, cert, BridgeTypes.CLAIM_ABORT);
    }

    /// `BridgeTypes.batchRoot(BridgeTypes.batchLeaf(claimDigest), proof)`.
    function batchRootOf(bytes32 claimDigest, bytes32[] calldata proof)
        external
        pure
        override
        returns (bytes32)
    {
        return BridgeTypes.batchRoot(BridgeTypes.batchLeaf(claimDigest), proof);
    }

    /// `BridgeTypes.batchRootDigest` for any domain.
    function batchRootDigestFor(
        bytes32 network,
        bytes32 ledger,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 root,
        uint32 count
    ) external pure override returns (bytes32) {
        return BridgeTypes.batchRootDigest(network, ledger, bridge, epoch, kind, root, count);
    }

    /// The batched step of claim `kind`. Guarantees, in order: the certificate (see
    /// `_verifyBatch`); then per item: its claim proves into the root (InvalidBatchProof(i)),
    /// it is not a repeat of an earlier item (DuplicateBatchItem(i)), a prepare targets this
    /// endpoint with a nonzero amount; then it is skipped if already settled by this step
    /// (TermsMismatch if recorded with other terms) or goes through the single step's logic.
    function _batch(
        BridgeTypes.Terms[] calldata ts,
        bytes32[][] calldata proofs,
        BridgeTypes.BatchCertificate calldata cert,
        uint8 kind
    ) private {
        uint256 n = ts.length;
        _verifyBatch(cert, kind, n, proofs.length);
        bytes32[] memory ids = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            BridgeTypes.Terms calldata t = ts[i];
            bytes32 id = BridgeTypes.transferId(t);
            bytes32 hash = BridgeTypes.termsHash(t, id);
            _verifyBatchItem(cert, kind, id, hash, proofs[i], i);
            _markSeen(id, i);
            ids[i] = id;
            if (kind == BridgeTypes.CLAIM_LOCKED) {
                if (!_isTarget(t)) revert WrongLedger();
                if (t.amount == 0) revert ZeroAmount();
            }
            (bool done, uint8 legKind, uint8 state) = _settled(t, id, hash, kind);
            if (done) {
                emit BatchItemSkipped(id, legKind, state);
            } else if (kind == BridgeTypes.CLAIM_LOCKED) {
                _prepare(t, id, hash);
            } else if (kind == BridgeTypes.CLAIM_COMMIT) {
                _commit(t, id, hash);
            } else {
                _abort(t, id, hash);
            }
        }
        _clearSeen(ids);
    }

    /// Whether item `id` is already where the step of `kind` puts it: an inbound leg recorded
    /// at all (prepare), Burned / Minted (commit), Released / Aborted (abort). A settled leg
    /// holding other terms reverts TermsMismatch.
    function _settled(BridgeTypes.Terms calldata t, bytes32 id, bytes32 hash, uint8 kind)
        private
        view
        returns (bool done, uint8 legKind, uint8 state)
    {
        bytes32 stored;
        if (kind != BridgeTypes.CLAIM_LOCKED && _isSource(t)) {
            OutLeg storage o = _out[id];
            (legKind, state, stored) = (LEG_OUT, uint8(o.state), o.termsHash);
            done = state
                == uint8(kind == BridgeTypes.CLAIM_COMMIT ? OutState.Burned : OutState.Released);
        } else {
            InLeg storage l = _in[id];
            (legKind, state, stored) = (LEG_IN, uint8(l.state), l.termsHash);
            if (kind == BridgeTypes.CLAIM_LOCKED) done = state != uint8(InState.None);
            else if (kind == BridgeTypes.CLAIM_COMMIT) done = state == uint8(InState.Minted);
            else done = state == uint8(InState.Aborted);
        }
        if (done && stored != hash) revert TermsMismatch(id);
    }

    /// Reverts unless `cert` certifies claims of `kind` (WrongBatchKind), covers the call's
    /// `n` >= 1 items with one proof each (InvalidBatch), and holds >= threshold valid
    /// signatures of a verifying epoch over `BridgeTypes.batchRootDigest` for this network,
    /// ledger and contract (the single-claim certificate rule, same errors).
    /// SECURITY: the root digest is tagged apart from every claim digest, so no single-claim
    /// certificate verifies as a batch certificate, nor the reverse.
    function _verifyBatch(
        BridgeTypes.BatchCertificate calldata cert,
        uint8 kind,
        uint256 n,
        uint256 proofs
    ) private view {
        if (cert.kind != kind) revert WrongBatchKind(cert.kind, kind);
        if (n == 0 || n > cert.count || proofs != n) revert InvalidBatch();
        uint64 epoch = cert.epoch;
        uint8 threshold = _verifyingEpoch(epoch).threshold;
        bytes32 digest = BridgeTypes.batchRootDigest(
            _network(), ledgerId, _selfWord(), epoch, kind, cert.root, cert.count
        );
        _checkSignatures(cert.signatures, epoch, threshold, digest);
    }

    /// Reverts InvalidBatchProof(`index`) unless the leaf of the claim (`kind`, `id`, `hash`)
    /// for this network, ledger, contract and `cert.epoch` proves into `cert.root` with
    /// `proof` (at most MAX_BATCH_PROOF hashes).
    function _verifyBatchItem(
        BridgeTypes.BatchCertificate calldata cert,
        uint8 kind,
        bytes32 id,
        bytes32 hash,
        bytes32[] calldata proof,
        uint256 index
    ) private view {
        bytes32 leaf = BridgeTypes.batchLeaf(
            BridgeTypes.claimDigest(_network(), ledgerId, _selfWord(), cert.epoch, kind, id, hash)
        );
        if (
            proof.length > BridgeTypes.MAX_BATCH_PROOF
                || BridgeTypes.batchRoot(leaf, proof) != cert.root
        ) revert InvalidBatchProof(index);
    }

    /// DuplicateBatchItem(`index`) if `id` was already seen in this call; marks it seen
    /// (transient storage, cleared by `_clearSeen` before the call returns).
    function _markSeen(bytes32 id, uint256 index) private {
        bytes32 slot = id ^ BATCH_SEEN;
        uint256 seen;
        assembly ("memory-safe") {
            seen := tload(slot)
            tstore(slot, 1)
        }
        if (seen != 0) revert DuplicateBatchItem(index);
    }

    function _clearSeen(bytes32[] memory ids) private {
        bytes32 offset = BATCH_SEEN;
        for (uint256 i = 0; i < ids.length; ++i) {
            bytes32 slot = ids[i] ^ offset;
            assembly ("memory-safe") {
                tstore(slot, 0)
            }
        }
    }
}
