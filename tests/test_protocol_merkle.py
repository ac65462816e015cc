"""protocol/merkle.py: batch trees, inclusion proofs and their failures."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle


def leaves(size: int, salt: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(salt + b"entry %d" % n) for n in range(size)]


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def flipped(data: bytes, bit: int) -> bytes:
    return data[: bit // 8] + bytes([data[bit // 8] ^ (1 << bit % 8)]) + data[bit // 8 + 1 :]


sizes = st.integers(1, 300)


@st.composite
def trees(draw: st.DrawFn, min_size: int = 1) -> tuple[list[bytes], list[list[bytes]], int]:
    """Leaves, the tree over them and the index of one leaf."""
    size = draw(st.integers(min_size, 300))
    hashes = leaves(size, draw(st.binary(max_size=8)))
    return hashes, merkle.tree(hashes), draw(st.integers(0, size - 1))


def test_leaves_and_nodes_are_hashed_apart() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.root(merkle.tree([a, b])) == node(a, b)
    assert node(a, b) != merkle.leaf_hash(a + b)  # no pair of leaves passes for a leaf


def test_small_trees_have_the_documented_shape() -> None:
    a, b, c, d, e = leaves(5)
    assert merkle.tree([a, b, c]) == [[a, b, c], [node(a, b), c], [node(node(a, b), c)]]
    assert merkle.root(merkle.tree([a, b, c, d])) == node(node(a, b), node(c, d))
    five = merkle.tree([a, b, c, d, e])  # the unpaired e is carried up twice, unchanged
    assert merkle.root(five) == node(node(node(a, b), node(c, d)), e)
    assert merkle.proof(five, 0) == [b, node(c, d), e]
    assert merkle.proof(five, 3) == [c, node(a, b), e]
    assert merkle.proof(five, 4) == [node(node(a, b), node(c, d))]


def test_a_tree_of_one_leaf_is_that_leaf() -> None:
    [leaf] = leaves(1)
    levels = merkle.tree([leaf])
    assert merkle.root(levels) == leaf
    assert merkle.proof(levels, 0) == []
    assert merkle.root_from_proof(leaf, 0, 1, []) == leaf
    with pytest.raises(merkle.ProofError, match="too many"):
        merkle.root_from_proof(leaf, 0, 1, [leaf])


def test_an_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.tree([])


def test_every_proof_of_every_tree_up_to_300_leads_to_the_root() -> None:
    for size in range(1, 301):
        hashes = leaves(size)
        levels = merkle.tree(hashes)
        root = merkle.root(levels)
        assert len(levels[-1]) == 1
        for index, leaf in enumerate(hashes):
            path = merkle.proof(levels, index)
            assert len(path) <= (size - 1).bit_length()
            assert merkle.root_from_proof(leaf, index, size, path) == root


@settings(deadline=None)
@given(trees())
def test_a_proof_leads_from_its_leaf_to_the_root(tree: tuple) -> None:
    hashes, levels, index = tree
    path = merkle.proof(levels, index)
    assert merkle.root_from_proof(hashes[index], index, len(hashes), path) == merkle.root(levels)


@settings(deadline=None)
@given(trees(), st.integers(0, 255))
def test_a_changed_leaf_leads_elsewhere(tree: tuple, bit: int) -> None:
    hashes, levels, index = tree
    path = merkle.proof(levels, index)
    reached = merkle.root_from_proof(flipped(hashes[index], bit), index, len(hashes), path)
    assert reached != merkle.root(levels)


@settings(deadline=None)
@given(trees(min_size=2), st.data())
def test_a_changed_sibling_leads_elsewhere(tree: tuple, data: st.DataObject) -> None:
    hashes, levels, index = tree
    path = merkle.proof(levels, index)
    at = data.draw(st.integers(0, len(path) - 1))
    path[at] = flipped(path[at], data.draw(st.integers(0, 255)))
    assert merkle.root_from_proof(hashes[index], index, len(hashes), path) != merkle.root(levels)


@settings(deadline=None)
@given(trees(min_size=2), st.data())
def test_a_proof_at_another_index_fails(tree: tuple, data: st.DataObject) -> None:
    hashes, levels, index = tree
    size = len(hashes)
    path = merkle.proof(levels, index)
    other = data.draw(st.integers(0, size - 1).filter(lambda n: n != index))
    try:
        reached = merkle.root_from_proof(hashes[index], other, size, path)
    except merkle.ProofError as exc:  # the proof has the wrong length for that position
        assert "too" in str(exc)
    else:
        assert reached != merkle.root(levels)


@settings(deadline=None)
@given(trees(), st.sampled_from([-1, 0, 1, 2**64]))
def test_an_index_outside_the_tree_is_a_proof_error(tree: tuple, beyond: int) -> None:
    hashes, levels, index = tree
    size = len(hashes)
    wrong = -1 if beyond == -1 else size + beyond
    path = merkle.proof(levels, index)
    with pytest.raises(merkle.ProofError, match=f"not within a batch of {size}"):
        merkle.root_from_proof(hashes[index], wrong, size, path)


@settings(deadline=None)
@given(trees(), st.sampled_from(["short", "long"]), st.binary(min_size=32, max_size=32))
def test_a_proof_of_the_wrong_length_is_a_proof_error(tree: tuple, cut: str, extra: bytes) -> None:
    hashes, levels, index = tree
    path = merkle.proof(levels, index)
    if cut == "short":
        if not path:
            return  # a one-leaf tree's proof is empty: nothing to leave out
        wrong, reason = path[:-1], "too few"
    else:
        wrong, reason = [*path, extra], "too many"
    with pytest.raises(merkle.ProofError, match=reason):
        merkle.root_from_proof(hashes[index], index, len(hashes), wrong)


def test_a_proof_longer_than_any_batch_needs_is_refused() -> None:
    [leaf] = leaves(1)
    size = 2**70
    path = [leaf] * (merkle.MAX_PROOF + 1)
    with pytest.raises(merkle.ProofError, match="longer than any batch needs"):
        merkle.root_from_proof(leaf, 0, size, path)
    assert issubclass(merkle.ProofError, ValueError)
