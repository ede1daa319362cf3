"""Batched certificates: one committee signature over a Merkle root of many claims (ADR 0025).

- A leaf is ``keccak256(abi.encode(BATCH_LEAF_TAG, claimDigest))`` where ``claimDigest`` is
  the unchanged per-claim digest (:func:`~.digests.claim_digest`): the tag makes a leaf never
  equal an internal node, a root digest or a single-claim digest.
- An internal node is ``keccak256(abi.encode(BATCH_NODE_TAG, min(a, b), max(a, b)))``: sorted
  pairs, so a proof is only the list of sibling hashes, bottom up. The leaves of a tree are
  sorted ascending and distinct (a claim twice in one batch is refused when building); an odd
  node at the end of a level is promoted to the next level unchanged.
- The committee signs the root digest ``keccak256(abi.encode(BATCH_ROOT_TAG, uint16 2,
  network, ledger, bridge, uint64 epoch, uint8 kind, root, uint32 count))``: one signature per
  claim kind per ledger per batch, bound to the network, the verifying ledger, its endpoint
  and the epoch like every claim, and domain-separated from every single-claim digest.
- An item proves into a root only with a claim of the root's epoch and kind: a verifier
  recomputes the item's claim digest from ITS OWN network, ledger and endpoint words and the
  certificate's epoch and kind (never from the caller), and refuses a certificate whose kind
  is not the one the step needs (WRONG_BATCH_KIND).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from .digests import CLAIM_ABORT, CLAIM_COMMIT, CLAIM_LOCKED, PROTOCOL_VERSION, claim_digest
from .hashing import encode, keccak256, tag, uint, word32
from .reasons import ErrorReason, ProtocolError
from .signatures import check_certificate

BATCH_LEAF_TAG = tag("KSTB/batch-leaf/v2")
BATCH_NODE_TAG = tag("KSTB/batch-node/v2")
BATCH_ROOT_TAG = tag("KSTB/batch-root/v2")

CLAIM_KINDS = (CLAIM_LOCKED, CLAIM_COMMIT, CLAIM_ABORT)
MAX_BATCH_LEAVES = 2**32 - 1
"""A batch's count is a ``uint32``: at most this many claims under one root."""
MAX_PROOF_LENGTH = 32
"""No tree of at most :data:`MAX_BATCH_LEAVES` leaves is deeper than this."""


def batch_leaf(digest: bytes) -> bytes:
    """``keccak256(abi.encode(BATCH_LEAF_TAG, claimDigest))``: one claim's leaf."""
    return keccak256(encode(BATCH_LEAF_TAG, word32(digest)))


def batch_node(a: bytes, b: bytes) -> bytes:
    """``keccak256(abi.encode(BATCH_NODE_TAG, min(a, b), max(a, b)))``: the parent of two
    nodes, the same whichever order they are given in."""
    lo, hi = sorted((word32(a), word32(b)))
    return keccak256(encode(BATCH_NODE_TAG, lo, hi))


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` (sibling hashes, bottom up) leads to from ``leaf``."""
    node = word32(leaf)
    for sibling in proof:
        node = batch_node(node, sibling)
    return node


def verify_proof(leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True exactly when ``proof`` leads from ``leaf`` to ``root`` and is at most
    :data:`MAX_PROOF_LENGTH` long.

    SECURITY: ``leaf`` must be one the verifier computed itself with :func:`batch_leaf` from
    the claim it is checking; an inner node handed in as a "leaf" verifies with its shorter
    proof. Every caller (contracts, chaincode, members, the coordinator) builds the leaf from
    the claim's own terms, which is what keeps a leaf and an inner node apart."""
    return len(proof) <= MAX_PROOF_LENGTH and process_proof(leaf, proof) == word32(root)


@dataclass(frozen=True, slots=True)
class BatchTree:
    """A Merkle tree over distinct leaves, sorted ascending.

    ``levels[0]`` is the sorted leaves, ``levels[-1]`` is ``(root,)``. Construct it with
    :func:`build_tree`; every proof it hands out verifies (:func:`verify_proof`) into ``root``.
    """

    levels: tuple[tuple[bytes, ...], ...]

    @property
    def leaves(self) -> tuple[bytes, ...]:
        """The leaves, sorted ascending."""
        return self.levels[0]

    @property
    def root(self) -> bytes:
        """The root (the only leaf for a one-leaf tree)."""
        return self.levels[-1][0]

    @property
    def count(self) -> int:
        """How many leaves the tree has."""
        return len(self.levels[0])

    def proof(self, leaf: bytes) -> tuple[bytes, ...]:
        """The sibling hashes, bottom up, from ``leaf`` to the root; levels where the node is
        promoted (odd, last) add none. Raises ProtocolError(INVALID_BATCH_PROOF) for a leaf
        that is not in the tree."""
        try:
            index = self.levels[0].index(leaf)
        except ValueError:
            raise ProtocolError(ErrorReason.INVALID_BATCH_PROOF, "leaf not in the batch") from None
        out: list[bytes] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index //= 2
        return tuple(out)


def build_tree(leaves: Iterable[bytes]) -> BatchTree:
    """Sort ``leaves`` and build their tree.

    Raises ProtocolError(INVALID_BATCH) for no leaf or more than :data:`MAX_BATCH_LEAVES`,
    and ProtocolError(DUPLICATE_BATCH_ITEM) when a leaf occurs twice (so one claim can never
    be counted twice under one root); ValueError for a leaf that is not 32 bytes.
    """
    level = tuple(sorted(word32(x) for x in leaves))
    if not level or len(level) > MAX_BATCH_LEAVES:
        raise ProtocolError(ErrorReason.INVALID_BATCH, f"count={len(level)}")
    for a, b in pairwise(level):
        if a == b:
            raise ProtocolError(ErrorReason.DUPLICATE_BATCH_ITEM, f"leaf=0x{a.hex()}")
    levels = [level]
    while len(level) > 1:
        nxt = [batch_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = tuple(nxt)
        levels.append(level)
    return BatchTree(tuple(levels))


def batch_root_digest(
    network: bytes, ledger: bytes, bridge: bytes, epoch: int, kind: int, root: bytes, count: int
) -> bytes:
    """``BridgeTypes.batchRootDigest``: what a committee member signs for one batch.

    ``keccak256(abi.encode(BATCH_ROOT_TAG, uint16 2, network, ledger, bridge, uint64 epoch,
    uint8 kind, root, uint32 count))``.
    """
    return keccak256(
        encode(
            BATCH_ROOT_TAG,
            uint(PROTOCOL_VERSION, 16),
            word32(network),
            word32(ledger),
            word32(bridge),
            uint(epoch, 64),
            uint(kind, 8),
            word32(root),
            uint(count, 32),
        )
    )


@dataclass(frozen=True, slots=True)
class BatchClaim:
    """One claim about one transfer, as a batch carries it (all of a batch's claims share
    the network, ledger, bridge, epoch and kind; :func:`build_batch` checks it)."""

    network: bytes
    ledger: bytes
    bridge: bytes
    epoch: int
    kind: int
    transfer_id: bytes
    terms_hash: bytes

    @property
    def digest(self) -> bytes:
        """The unchanged single-claim digest."""
        return claim_digest(
            self.network,
            self.ledger,
            self.bridge,
            self.epoch,
            self.kind,
            self.transfer_id,
            self.terms_hash,
        )

    @property
    def leaf(self) -> bytes:
        """This claim's leaf."""
        return batch_leaf(self.digest)


@dataclass(frozen=True, slots=True)
class Batch:
    """Claims of one kind for one endpoint and epoch, their tree and the digest to sign."""

    network: bytes
    ledger: bytes
    bridge: bytes
    epoch: int
    kind: int
    tree: BatchTree

    @property
    def root(self) -> bytes:
        """The tree's root."""
        return self.tree.root

    @property
    def count(self) -> int:
        """How many claims the batch holds."""
        return self.tree.count

    @property
    def digest(self) -> bytes:
        """The root digest the committee signs."""
        return batch_root_digest(
            self.network, self.ledger, self.bridge, self.epoch, self.kind, self.root, self.count
        )

    def proof(self, claim: BatchClaim) -> tuple[bytes, ...]:
        """The inclusion proof of ``claim`` (INVALID_BATCH_PROOF if it is not in the batch)."""
        return self.tree.proof(claim.leaf)


def build_batch(claims: Sequence[BatchClaim]) -> Batch:
    """Build the batch of ``claims``.

    Raises ProtocolError: INVALID_BATCH for no claim or an unknown kind; when the claims
    differ (one root covers one kind for one endpoint and epoch) WRONG_LEDGER (network,
    ledger or bridge), WRONG_EPOCH or WRONG_BATCH_KIND; DUPLICATE_BATCH_ITEM for a claim
    given twice.
    """
    if not claims:
        raise ProtocolError(ErrorReason.INVALID_BATCH, "count=0")
    first = claims[0]
    if first.kind not in CLAIM_KINDS:
        raise ProtocolError(ErrorReason.INVALID_BATCH, f"kind={first.kind}")
    shape = (first.network, first.ledger, first.bridge, first.epoch, first.kind)
    for i, c in enumerate(claims):
        if (c.network, c.ledger, c.bridge) != shape[:3]:
            raise ProtocolError(ErrorReason.WRONG_LEDGER, f"index={i} is for another endpoint")
        if c.epoch != first.epoch:
            raise ProtocolError(ErrorReason.WRONG_EPOCH, f"index={i} epoch={c.epoch}")
        if c.kind != first.kind:
            raise ProtocolError(ErrorReason.WRONG_BATCH_KIND, f"index={i} kind={c.kind}")
    return Batch(*shape, tree=build_tree(c.leaf for c in claims))


@dataclass(frozen=True, slots=True)
class BatchCertificate:
    """``BridgeTypes.BatchCertificate``: the committee's signatures over one root digest.

    Construction checks only the encoding bounds; :func:`check_batch_certificate` applies
    the acceptance rule.
    """

    epoch: int
    kind: int
    root: bytes
    count: int
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        uint(self.epoch, 64)
        uint(self.kind, 8)
        word32(self.root)
        uint(self.count, 32)

    def digest(self, network: bytes, ledger: bytes, bridge: bytes) -> bytes:
        """The root digest this certificate's signatures are over, for one endpoint."""
        return batch_root_digest(
            network, ledger, bridge, self.epoch, self.kind, self.root, self.count
        )


def check_batch_shape(cert: BatchCertificate, kind: int, items: int) -> None:
    """The checks of :func:`check_batch_certificate` that need no committee, in its order:
    the kind is ``kind`` (WRONG_BATCH_KIND), then ``1 <= items <= count`` (INVALID_BATCH).
    A ledger that resolves the certificate's epoch before :func:`check_batch_certificate`
    runs these first, so a certificate of the wrong kind or size gets the same reason on
    every ledger whatever its epoch (the EVM endpoint checks kind, count, then epoch)."""
    if cert.kind != kind:
        raise ProtocolError(ErrorReason.WRONG_BATCH_KIND, f"got={cert.kind}, needed={kind}")
    if not 1 <= items <= cert.count:
        raise ProtocolError(ErrorReason.INVALID_BATCH, f"items={items}, count={cert.count}")


def check_batch_certificate(
    cert: BatchCertificate,
    kind: int,
    items: int,
    network: bytes,
    ledger: bytes,
    bridge: bytes,
    current_epoch: int,
    threshold: int,
    members: Collection[bytes],
) -> None:
    """Accept ``cert`` for a step that needs claims of ``kind`` about ``items`` items.

    In order: the certificate's kind is ``kind`` (WRONG_BATCH_KIND: a COMMIT root can never
    abort); ``1 <= items <= count`` (INVALID_BATCH); then the single-claim certificate rule
    (:func:`~.signatures.check_certificate`) over the root digest bound to this endpoint's
    ``network``, ``ledger`` and ``bridge``. Raises ProtocolError on the first failure.
    """
    check_batch_shape(cert, kind, items)
    check_certificate(
        cert.digest(network, ledger, bridge),
        cert.epoch,
        current_epoch,
        threshold,
        members,
        cert.signatures,
    )


def check_batch_item(
    cert: BatchCertificate,
    network: bytes,
    ledger: bytes,
    bridge: bytes,
    transfer_id: bytes,
    terms_hash: bytes,
    proof: Sequence[bytes],
) -> None:
    """Accept one item under an (already accepted) certificate: the claim of the
    certificate's epoch and kind about (``transfer_id``, ``terms_hash``) for this endpoint
    proves into ``cert.root``. Raises ProtocolError(INVALID_BATCH_PROOF) otherwise."""
    digest = claim_digest(network, ledger, bridge, cert.epoch, cert.kind, transfer_id, terms_hash)
    if not verify_proof(batch_leaf(digest), proof, cert.root):
        raise ProtocolError(ErrorReason.INVALID_BATCH_PROOF, f"transfer=0x{transfer_id.hex()}")


def check_distinct(transfer_ids: Sequence[bytes]) -> None:
    """DUPLICATE_BATCH_ITEM when one transfer id occurs twice among one call's items."""
    seen: set[bytes] = set()
    for i, tid in enumerate(transfer_ids):
        if tid in seen:
            raise ProtocolError(ErrorReason.DUPLICATE_BATCH_ITEM, f"index={i}")
        seen.add(tid)
