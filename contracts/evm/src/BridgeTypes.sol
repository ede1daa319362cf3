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

    // ---- depository halt

    bytes32 internal constant ORDER_TAG = keccak256("KSTB/depository-order/v2");
    uint8 internal constant ORDER_HALT = 1;
    uint8 internal constant ORDER_RELEASE = 2;
    uint8 internal constant ORDER_SET_DEPOSITORY = 3;

    /// A depository order (see bridge/core/digests.py `Order`): halt or release `securityId`
    /// (zero: every security) on `ledgerId` (zero: every ledger of `network`), or replace the
    /// depository key (`key`, an address word; zero for halt/release).
    struct Order {
        bytes32 network;
        bytes32 ledgerId;
        bytes32 securityId;
        uint8 action;
        uint64 sequence; // strictly increasing per ledger
        uint64 expiry; // unix seconds; refused from then on
        bytes32 key;
    }

    /// What the depository signs.
    function orderDigest(Order calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TAG,
                PROTOCOL_VERSION,
                o.network,
                o.ledgerId,
                o.securityId,
                o.action,
                o.sequence,
                o.expiry,
                o.key
            )
        );
    }

    // ---- batched certificates (ADR 0025)
    //
    // One committee signature per claim kind per ledger covers the Merkle root of many claims
    // (bridge/core/batch.py computes the same, byte for byte). A leaf is the tagged claim
    // digest, an internal node the tagged hash of its sorted children, so a proof is the list
    // of sibling hashes, bottom up; the committee signs `batchRootDigest`.

    bytes32 internal constant BATCH_LEAF_TAG = keccak256("KSTB/batch-leaf/v2");
    bytes32 internal constant BATCH_NODE_TAG = keccak256("KSTB/batch-node/v2");
    bytes32 internal constant BATCH_ROOT_TAG = keccak256("KSTB/batch-root/v2");
    /// Longest proof accepted (no tree of < 2^32 leaves is deeper).
    uint256 internal constant MAX_BATCH_PROOF = 32;

    /// The committee's signatures (as in `Certificate`) over the batch root digest of
    /// (`epoch`, `kind`, `root`, `count`) for one endpoint.
    struct BatchCertificate {
        uint64 epoch;
        uint8 kind;
        bytes32 root;
        uint32 count;
        bytes signatures;
    }

    /// `keccak256(abi.encode(BATCH_LEAF_TAG, claimDigest))`.
    function batchLeaf(bytes32 claim) internal pure returns (bytes32 leaf) {
        bytes32 leafTag = BATCH_LEAF_TAG;
        assembly ("memory-safe") {
            mstore(0x00, leafTag)
            mstore(0x20, claim)
            leaf := keccak256(0x00, 0x40)
        }
    }

    /// The root `proof` leads to from `leaf`: each step hashes
    /// `abi.encode(BATCH_NODE_TAG, min(node, sibling), max(node, sibling))`.
    function batchRoot(bytes32 leaf, bytes32[] calldata proof) internal pure returns (bytes32 node) {
        node = leaf;
        bytes32 nodeTag = BATCH_NODE_TAG;
        for (uint256 i = 0; i < proof.length; ++i) {
            bytes32 sibling = proof[i];
            (bytes32 lo, bytes32 hi) = node < sibling ? (node, sibling) : (sibling, node);
            assembly ("memory-safe") {
                let p := mload(0x40) // scratch above the free memory pointer, not allocated
                mstore(p, nodeTag)
                mstore(add(p, 0x20), lo)
                mstore(add(p, 0x40), hi)
                node := keccak256(p, 0x60)
            }
        }
    }

    /// What the committee signs for a batch: `keccak256(abi.encode(BATCH_ROOT_TAG, uint16 2,
    /// network, ledgerId, bridge, uint64 epoch, uint8 kind, root, uint32 count))`.
    function batchRootDigest(
        bytes32 network,
        bytes32 ledgerId,
        bytes32 bridge,
        uint64 epoch,
        uint8 kind,
        bytes32 root,
        uint32 count
    ) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                BATCH_ROOT_TAG, PROTOCOL_VERSION, network, ledgerId, bridge, epoch, kind, root, count
            )
        );
    }
}
