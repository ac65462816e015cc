"""Merkle trees over receipts: one signature vouches for a whole batch of entries.

Leaves and interior nodes are hashed with different prefixes (0x00 and 0x01, as in RFC 9162)
so that no leaf can pass for a node. An unpaired last node is carried up a level unchanged, so
a tree of ``size`` leaves has exactly one shape, and an inclusion proof is just the sibling
hashes met on the way from a leaf to the root: which side each one is on follows from the
leaf's index and the tree's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_PROOF = 64  # siblings: enough for any tree a sha256 index could address


class ProofError(ValueError):
    """An inclusion proof that cannot be walked (wrong length, index out of range)."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree over ``leaves`` (leaf hashes), leaves first, root last."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = list(leaves)
    levels = [level]
    while len(level) > 1:
        parents = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            parents.append(level[-1])
        levels.append(parents)
        level = parents
    return levels


def root(levels: list[list[bytes]]) -> bytes:
    return levels[-1][0]


def proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    """The siblings of leaf ``index`` from the bottom up: its inclusion proof."""
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def root_from_proof(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` leads to from ``leaf`` at ``index`` of ``size`` leaves.

    Compare it with the signed root; raises ``ProofError`` for a proof of the wrong length.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not within a batch of {size}")
    if len(path) > MAX_PROOF:
        raise ProofError(f"a proof of {len(path)} hashes is longer than any batch needs")
    siblings = iter(path)
    node, width = leaf, size
    try:
        while width > 1:
            if index % 2:
                node = _node(next(siblings), node)
            elif index + 1 < width:
                node = _node(node, next(siblings))
            index //= 2
            width = (width + 1) // 2
    except StopIteration:
        raise ProofError(f"the proof has {len(path)} hashes: too few for a batch of {size}") \
            from None
    if next(siblings, None) is not None:
        raise ProofError(f"the proof has {len(path)} hashes: too many for a batch of {size}")
    return node
