// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// Shared types of the KSTB bridge protocol (version 2). The protocol core `bridge/core`
/// (Python, vendored into the Fabric chaincode) computes the same identifiers and digests
/// byte for byte; `bridge/core/vectors.json` holds golden cases all of them are checked against.
library BridgeTypes {
    bytes32 internal constant TRANSFER_TAG = keccak256("KSTB/transfer-id/v2");
    bytes32 internal constant TERMS_TAG = keccak256("KSTB/terms/v2");
    bytes32 internal constant CLAIM_TAG = keccak256("KSTB/claim/v2");
    bytes32 internal constant INSTRUCTION_TAG = keccak256("KSTB/instruction/v2");
    bytes32 internal constant ROTATION_TAG = keccak256("KSTB/committee-rotation/v2");
    uint16 internal constant PROTOCOL_VERSION = 2;

    uint8 internal constant CLAIM_LOCKED = 1;
    uint8 internal constant CLAIM_COMMIT = 2;
    uint8 internal constant CLAIM_ABORT = 3;

    /// Everything the ledgers and the committee agree on for one transfer.
    /// Addresses are 32-byte words (EVM: bytes32(uint256(uint160(a)))).
    struct Terms {
        bytes32 nonce;
        bytes32 securityId; // ISIN ASCII, right-padded with zero bytes
        uint256 amount;
        bytes32 srcLedgerId; // keccak256(ledger name)
        bytes32 srcBridge;
        bytes32 dstLedgerId;
        bytes32 dstBridge;
        bytes32 sender;
        bytes32 recipient;
        bytes32 instructor; // the address whose key instructed the lock (12 zero bytes + 20)
        uint64 deadline; // unix seconds
    }

    /// A committee certificate: concatenated 65-byte (r, s, v) signatures,
    /// strictly ascending by signer address, all from committee `epoch`.
    struct Certificate {
        uint64 epoch;
        bytes signatures;
    }

    function transferId(Terms calldata t) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(TRANSFER_TAG, t.srcLedgerId, t.srcBridge, t.sender, t.instructor, t.nonce)
        );
    }

    function termsHash(Terms calldata t, bytes32 id) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TERMS_TAG,
                id,
                t.securityId,
                t.amount,
                t.srcLedgerId,
                t.srcBridge,
                t.dstLedgerId,
                t.dstBridge,
                t.sender,
                t.recipient,
                t.instructor,
                t.deadline
            )
        );
    }

    /// What the instructing brokerage signs: bound to the source network and the terms hash.
    function instructionDigest(bytes32 network, bytes32 hash) internal pure returns (bytes32) {
        return keccak256(abi.encode(INSTRUCTION_TAG, PROTOCOL_VERSION, network, hash));
    }

    function claimDigest(
        bytes32 network,
        bytes32 ledgerId,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 id,
        bytes32 hash
    ) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                CLAIM_TAG,
                PROTOCOL_VERSION,
                network,
                ledgerId,
                bridge,
                epoch,
                kind,
                id,
                hash
            )
        );
    }

    // ---- committee rotation

    /// What t members of `epoch` sign to install `nextEpoch` on one endpoint (ADR 0008).
    /// `members` are hashed as `abi.encodePacked(address[])` (each padded to a word).
    function rotationDigest(
        bytes32 network,
        bytes32 ledgerId,
        bytes32 bridge,
        uint64 epoch,
        uint64 nextEpoch,
        uint8 threshold,
        address[] memory members,
        uint64 activation,
        uint64 overlap
    ) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ROTATION_TAG,
                PROTOCOL_VERSION,
                network,
                ledgerId,
                bridge,
                epoch,
                nextEpoch,
                threshold,
                keccak256(abi.encodePacked(members)),
                activation,
                overlap
            )
        );
    }
}
