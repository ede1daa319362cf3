// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IBridgeEndpoint} from "./IBridgeEndpoint.sol";

/// The SecurityToken views the lens reads (SecurityToken.sol's public getters).
interface ISecurityTokenViews {
    function balanceOf(address holder) external view returns (uint256);
    function receiveStatus(address to) external view returns (uint8);
    function isEligible(address holder) external view returns (bool);
    function isFrozen(address holder) external view returns (bool);
    function paused() external view returns (bool);
}

/// A read-only lens over a BridgeEndpoint (issue 14 item 4): many legs, many securities'
/// supply figures, or many holders' standing on one token, in one `eth_call`, so a relayer
/// or a committee member pays one JSON-RPC request per block for every transfer it reads
/// instead of one (or two) per leg.
///
/// Guarantees: no state, no owner, no constructor arguments, no writes, no value: the lens
/// only calls the endpoint's own views (`outbound`, `inbound`, `notBefore`, `supplyOf`) on
/// the endpoint the caller names (for `holderOf` and `holdersOf`, the token's `balanceOf`,
/// `receiveStatus`, `isEligible`, `isFrozen`, `paused`), at the block the `eth_call` names,
/// and returns what they return, item for item and in order. An unknown transfer id reads
/// as the endpoint reads it (state 0, zero hash); an unregistered security comes back with
/// `ok = false` and the endpoint's own revert data. A list longer than `MAX_ITEMS` is
/// refused (`TooManyItems`) so one call stays bounded in gas and in answer size on every
/// node (`eth_call` gas caps differ by client).
contract BridgeLens {
    /// The most ids (securities, holders) one call reads.
    uint256 public constant MAX_ITEMS = 256;

    /// `given` items were asked for, more than `max`.
    error TooManyItems(uint256 given, uint256 max);
    /// `ids` and `legs` differ in length.
    error LengthMismatch(uint256 ids, uint256 legs);

    /// One leg as `outbound`/`inbound` and `notBefore` report it. `reason` is the inbound
    /// leg's (0 for an outbound one); `notBefore` the leg's own delay (ADR 0010).
    struct LegView {
        uint8 state;
        bytes32 termsHash;
        uint8 reason;
        uint64 notBefore;
    }

    /// One security's `supplyOf`, or `ok = false` with the endpoint's revert data.
    struct SupplyView {
        bool ok;
        bytes revertData;
        uint256 totalSupply;
        uint256 escrowed;
        uint256 prepared;
        uint256 burned;
        uint256 minted;
    }

    /// `legs[i] == 0`: the outbound leg of `ids[i]`; otherwise its inbound leg. `atBlock` is
    /// the number of the block read (the caller may name "latest" and learn which it was).
    function legsOf(IBridgeEndpoint endpoint, bytes32[] calldata ids, uint8[] calldata legs)
        external
        view
        returns (uint256 atBlock, LegView[] memory out)
    {
        atBlock = block.number;
        if (ids.length > MAX_ITEMS) revert TooManyItems(ids.length, MAX_ITEMS);
        if (ids.length != legs.length) revert LengthMismatch(ids.length, legs.length);
        out = new LegView[](ids.length);
        for (uint256 i = 0; i < ids.length; i++) {
            (uint64 outAt, uint64 inAt) = endpoint.notBefore(ids[i]);
            if (legs[i] == 0) {
                (uint8 state, bytes32 termsHash,,) = endpoint.outbound(ids[i]);
                out[i] = LegView(state, termsHash, 0, outAt);
            } else {
                (uint8 state, bytes32 termsHash,,, uint8 reason) = endpoint.inbound(ids[i]);
                out[i] = LegView(state, termsHash, reason, inAt);
            }
        }
    }

    /// `supplyOf(securities[i])` for each, in order, and the number of the block read.
    function suppliesOf(IBridgeEndpoint endpoint, bytes32[] calldata securities)
        external
        view
        returns (uint256 atBlock, SupplyView[] memory out)
    {
        atBlock = block.number;
        if (securities.length > MAX_ITEMS) revert TooManyItems(securities.length, MAX_ITEMS);
        out = new SupplyView[](securities.length);
        for (uint256 i = 0; i < securities.length; i++) {
            try endpoint.supplyOf(securities[i]) returns (
                uint256 total, uint256 escrowed, uint256 prepared, uint256 burned, uint256 minted
            ) {
                out[i] = SupplyView(true, "", total, escrowed, prepared, burned, minted);
            } catch (bytes memory data) {
                out[i] = SupplyView(false, data, 0, 0, 0, 0, 0);
            }
        }
    }

    /// One holder's standing on a token: what `balanceOf`, `receiveStatus`, `isEligible`
    /// and `isFrozen` return for it.
    struct HolderView {
        uint256 balance;
        uint8 status;
        bool eligible;
        bool frozen;
    }

    /// Many holders' standing on `token` in one call, in order, with the token's `paused()`
    /// (one figure for all of them) and the number of the block read.
    function holdersOf(ISecurityTokenViews token, address[] calldata holders)
        external
        view
        returns (uint256 atBlock, bool isPaused, HolderView[] memory out)
    {
        atBlock = block.number;
        if (holders.length > MAX_ITEMS) revert TooManyItems(holders.length, MAX_ITEMS);
        isPaused = token.paused();
        out = new HolderView[](holders.length);
        for (uint256 i = 0; i < holders.length; i++) {
            address h = holders[i];
            out[i] = HolderView(
                token.balanceOf(h), token.receiveStatus(h), token.isEligible(h), token.isFrozen(h)
            );
        }
    }

    /// A holder's standing on `token` in one call: what the five token views return.
    function holderOf(ISecurityTokenViews token, address holder)
        external
        view
        returns (uint256 balance, uint8 status, bool eligible, bool frozen, bool isPaused)
    {
        return (
            token.balanceOf(holder),
            token.receiveStatus(holder),
            token.isEligible(holder),
            token.isFrozen(holder),
            token.paused()
        );
    }
}
