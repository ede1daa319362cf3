// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IBridgeEndpoint} from "./IBridgeEndpoint.sol";

/// A regulated security token: one ISIN, whole units (decimals 0), an ERC-20 subset.
///
/// Roles (least privilege):
/// - `admin` (the issuer / transfer agent): issues and redeems units, keeps the eligibility
///   and freeze lists, pauses the token and appoints the bridge.
/// - `bridge` (one BridgeEndpoint): may only escrow, release, burn and mint, and only through
///   the four `bridge*` functions. Compliance is checked when units enter the bridge
///   (`bridgeEscrow`) and, on the target ledger, by the endpoint at prepare time via
///   `receiveStatus`; release and mint check only the pause (they wait for an unpause) so
///   that a two-phase commit that was prepared can always finish.
contract SecurityToken {
    /// `receiveStatus` codes; 1 is reserved (it means UnknownSecurity on the endpoint).
    uint8 public constant RECEIVE_OK = 0;
    uint8 public constant RECEIVE_NOT_ELIGIBLE = 2;
    uint8 public constant RECEIVE_FROZEN = 3;
    uint8 public constant RECEIVE_PAUSED = 4;

    string public name;
    string public symbol;
    /// The ISIN as ASCII, right-padded with zero bytes (same word as `Terms.securityId`).
    bytes32 public immutable securityId;
    /// The issuer / transfer agent; rotated with `proposeAdmin` + `acceptAdmin`.
    address public admin;
    /// The single bridge endpoint allowed to call the `bridge*` functions (0 = none).
    address public bridge;
    bool public paused;
    uint256 public totalSupply;

    mapping(address => uint256) public balanceOf;
    mapping(address => bool) public isEligible;
    mapping(address => bool) public isFrozen;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Issued(address indexed to, uint256 amount);
    event Redeemed(address indexed from, uint256 amount);
    event EligibilitySet(address indexed account, bool eligible);
    event FrozenSet(address indexed account, bool frozen);
    event Paused(address indexed by);
    event Unpaused(address indexed by);
    event BridgeSet(address indexed previousBridge, address indexed newBridge);

    error NotAdmin();
    error NotBridge();
    error TokenPaused();
    error HolderNotEligible(address holder);
    error HolderFrozen(address holder);
    error InsufficientBalance(address holder, uint256 balance, uint256 needed);
    error ZeroAmount();
    error ZeroAddress();
    /// The bridge's escrow is not the admin's to redeem, and a bridge holding escrow cannot
    /// be replaced (its in-flight transfers must be able to release or burn).
    error BridgeHoldsEscrow(uint256 escrowed);
    /// A bridge with units prepared (promised to recipients) cannot be replaced either: its
    /// commits must still be able to mint.
    error BridgeHoldsPrepared(uint256 prepared);

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin();
        _;
    }

    modifier onlyBridge() {
        if (msg.sender != bridge) revert NotBridge(); // msg.sender is never address(0)
        _;
    }

    modifier nonZero(uint256 amount) {
        if (amount == 0) revert ZeroAmount();
        _;
    }

    constructor(string memory name_, string memory symbol_, bytes32 securityId_, address admin_) {
        if (admin_ == address(0)) revert ZeroAddress();
        name = name_;
        symbol = symbol_;
        securityId = securityId_;
        admin = admin_;
    }

    /// Always 0: units are whole securities.
    function decimals() external pure returns (uint8) {
        return 0;
    }

    // ------------------------------------------------------------------ holders

    /// Moves `amount` units from the caller to `to`. Guarantees: the token is not paused,
    /// both parties are eligible and neither is frozen; reverts otherwise.
    function transfer(address to, uint256 amount) external returns (bool) {
        if (paused) revert TokenPaused();
        _requireCompliant(msg.sender);
        _requireCompliant(to);
        if (to == bridge) revert HolderNotEligible(to); // escrow only enters via bridgeEscrow
        _move(msg.sender, to, amount);
        return true;
    }

    /// What would happen if units were delivered to `to` now:
    /// 0 ok, 2 not eligible, 3 frozen, 4 paused (the first failing check, in that order of
    /// severity: paused, eligibility, freeze).
    function receiveStatus(address to) external view returns (uint8) {
        if (paused) return RECEIVE_PAUSED;
        if (!isEligible[to]) return RECEIVE_NOT_ELIGIBLE;
        if (isFrozen[to]) return RECEIVE_FROZEN;
        return RECEIVE_OK;
    }

    // ------------------------------------------------------------------ admin

    /// Creates `amount` new units for `to`. Guarantees: not paused, `to` eligible, not frozen.
    function issue(address to, uint256 amount) external onlyAdmin nonZero(amount) {
        if (paused) revert TokenPaused();
        _requireCompliant(to);
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
        emit Issued(to, amount);
    }

    /// Destroys `amount` of `from`'s units (a corporate action or court order; no compliance
    /// checks). Never touches the bridge's escrow.
    function redeem(address from, uint256 amount) external onlyAdmin nonZero(amount) {
        if (from == bridge && from != address(0)) revert BridgeHoldsEscrow(balanceOf[from]);
        _burn(from, amount);
        emit Redeemed(from, amount);
    }

    /// Adds `account` to (or removes it from) the list of holders allowed to hold units.
    function setEligible(address account, bool eligible) external onlyAdmin {
        isEligible[account] = eligible;
        emit EligibilitySet(account, eligible);
    }

    /// Freezes (or unfreezes) `account`: a frozen holder can neither send nor receive.
    function setFrozen(address account, bool frozen) external onlyAdmin {
        isFrozen[account] = frozen;
        emit FrozenSet(account, frozen);
    }

    /// Stops holder transfers, issuance, bridge escrow, release and mint (burn still works).
    function pause() external onlyAdmin {
        paused = true;
        emit Paused(msg.sender);
    }

    /// Lifts `pause`.
    function unpause() external onlyAdmin {
        paused = false;
        emit Unpaused(msg.sender);
    }

    /// Appoints the bridge endpoint. Guarantees: the previous bridge holds no units of this
    /// token (no escrow, no parked units: BridgeHoldsEscrow) and, when it is a contract, has
    /// none prepared (its `preparedTotal(securityId)`, BridgeHoldsPrepared), so no in-flight
    /// transfer is stranded. A call to an old bridge that fails reverts the replacement
    /// (fail closed); replacing a bridge otherwise goes through the rotation procedure.
    function setBridge(address newBridge) external onlyAdmin {
        address previous = bridge;
        if (previous != address(0) && balanceOf[previous] != 0) {
            revert BridgeHoldsEscrow(balanceOf[previous]);
        }
        if (previous.code.length != 0) {
            uint256 prepared = IBridgeEndpoint(previous).preparedTotal(securityId);
            if (prepared != 0) revert BridgeHoldsPrepared(prepared);
        }
        bridge = newBridge;
        emit BridgeSet(previous, newBridge);
    }

    // ---- admin
    // Two-step admin rotation: the current admin proposes, the proposed address accepts.
    // Proposing address(0) cancels a pending proposal. The admin never becomes address(0).

    event AdminProposed(address indexed admin, address indexed proposed);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    error NotPendingAdmin(address caller);

    /// The address proposed by `proposeAdmin` and not yet accepted (0 = none).
    address public pendingAdmin;

    /// Proposes `next` as the new admin (address(0) cancels). Guarantees: only the current
    /// admin; nothing changes until `next` calls `acceptAdmin`.
    function proposeAdmin(address next) external onlyAdmin {
        pendingAdmin = next;
        emit AdminProposed(admin, next);
    }

    /// Makes the caller the admin. Guarantees: the caller is the pending admin
    /// (NotPendingAdmin otherwise, also when none is pending); the old admin loses every right
    /// in the same transaction, and the proposal is consumed.
    function acceptAdmin() external {
        address next = pendingAdmin;
        if (msg.sender != next || next == address(0)) revert NotPendingAdmin(msg.sender);
        emit AdminTransferred(admin, next);
        admin = next;
        pendingAdmin = address(0);
    }

    // ------------------------------------------------------------------ bridge

    /// Moves `amount` of `from`'s units into the bridge's escrow balance. Guarantees: not
    /// paused, `from` eligible and not frozen, enough balance.
    function bridgeEscrow(address from, uint256 amount) external onlyBridge nonZero(amount) {
        if (paused) revert TokenPaused();
        _requireCompliant(from);
        _move(from, msg.sender, amount);
    }

    /// Returns `amount` escrowed units to `to`. No eligibility or freeze checks, so an aborted
    /// transfer can never strand units; but not while paused (it waits: the escrow stays
    /// with the bridge until the admin unpauses).
    function bridgeRelease(address to, uint256 amount) external onlyBridge nonZero(amount) {
        if (paused) revert TokenPaused(); // ---- depository halt: a release waits for unpause
        _move(msg.sender, to, amount);
    }

    /// Destroys `amount` escrowed units (the transfer committed; they now live on the target).
    function bridgeBurn(uint256 amount) external onlyBridge nonZero(amount) {
        _burn(msg.sender, amount);
    }

    /// Creates `amount` units for `to`. No eligibility or freeze checks: they were made at
    /// prepare time, and a prepared participant must always be able to commit; but not while
    /// paused (the commit waits until the admin unpauses; COMMIT stays final).
    function bridgeMint(address to, uint256 amount) external onlyBridge nonZero(amount) {
        if (paused) revert TokenPaused(); // ---- depository halt: a mint waits for unpause
        if (to == address(0)) revert ZeroAddress();
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    // ------------------------------------------------------------------ internals

    function _requireCompliant(address holder) private view {
        if (!isEligible[holder]) revert HolderNotEligible(holder);
        if (isFrozen[holder]) revert HolderFrozen(holder);
    }

    function _move(address from, address to, uint256 amount) private {
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        unchecked {
            balanceOf[from] = balance - amount;
        }
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }

    function _burn(address from, uint256 amount) private {
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        unchecked {
            balanceOf[from] = balance - amount;
            totalSupply -= amount;
        }
        emit Transfer(from, address(0), amount);
    }
}
