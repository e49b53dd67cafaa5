"""Documents signed together: one signature over a hash tree, each document with its path."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshssh_common.hash_tree import build, leaf_hash, root_of
from meshssh_common.signed_batch import BatchSigner
from meshssh_common.signed_doc import Refused, Signer, Verifier
from meshssh_common.wire import SignedDoc
from meshssh_common.wire.signed import BatchProof


def signer(kind: str = "map") -> Signer:
    return Signer(Ed25519PrivateKey.generate(), kind=kind)  # type: ignore[arg-type]


def refusal(verifier: Verifier, doc: SignedDoc) -> str:
    with pytest.raises(Refused) as caught:
        verifier.open(doc)
    return caught.value.why


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 33, 64, 100])
def test_every_document_of_a_batch_verifies_under_its_one_signature(size: int) -> None:
    s = signer()
    payloads = [f"map {i}".encode() * (i + 1) for i in range(size)]
    docs = s.sign_many(payloads)
    verifier = Verifier("map", s.pins)
    assert [verifier.open(d) for d in docs] == payloads
    assert len({d.signature for d in docs}) == 1
    if size == 1:
        assert docs[0].batch is None  # signed as a single document
    else:
        assert {d.batch.size for d in docs if d.batch} == {size}
        assert max(len(d.batch.path) for d in docs if d.batch) <= (size - 1).bit_length()


def test_a_changed_document_or_proof_is_refused() -> None:
    s = signer()
    docs = s.sign_many([b"a", b"b", b"c", b"d", b"e"])
    verifier = Verifier("map", s.pins)
    doc = docs[2]
    assert doc.batch is not None
    proof = doc.batch
    forged = [
        msgspec.structs.replace(doc, payload=b"C"),
        msgspec.structs.replace(doc, batch=msgspec.structs.replace(proof, index=3)),
        msgspec.structs.replace(doc, batch=msgspec.structs.replace(proof, size=6)),
        msgspec.structs.replace(doc, batch=msgspec.structs.replace(proof, path=proof.path[:-1])),
        msgspec.structs.replace(
            doc, batch=msgspec.structs.replace(proof, path=(*proof.path, bytes(32)))
        ),
        msgspec.structs.replace(
            doc, batch=msgspec.structs.replace(proof, path=(bytes(32), *proof.path[1:]))
        ),
        msgspec.structs.replace(doc, batch=None),  # the root's signature is not the payload's
        msgspec.structs.replace(doc, batch=msgspec.structs.replace(proof, index=9)),
    ]
    for bad in forged:
        assert refusal(verifier, bad) == "bad_signature", bad
    # another batch's proof and signature do not vouch for this payload
    other = s.sign_many([b"x", b"y", b"z", b"w", b"v"])[2]
    assert refusal(verifier, msgspec.structs.replace(other, payload=b"c")) == "bad_signature"
    # a JWKS batch is never a map batch
    jwks = signer("jwks")
    jdoc = jwks.sign_many([b"a", b"b"])[0]
    assert refusal(Verifier("map", jwks.pins), jdoc) == "bad_signature"


def test_an_inner_node_never_passes_for_a_document() -> None:
    leaves = [leaf_hash(p) for p in (b"a", b"b", b"c", b"d")]
    root, paths = build(leaves)
    assert root_of(leaves[1], 1, 4, paths[1]) == root
    # the left subtree's node presented as a document: its preimage (two leaf hashes) as
    # the payload, and the right subtree's node as the path of a 2-document batch
    left, _ = build(leaves[:2])
    right, _ = build(leaves[2:])
    assert root_of(left, 0, 2, [right]) == root  # what the prefixes are there to stop:
    assert root_of(leaf_hash(leaves[0] + leaves[1]), 0, 2, [right]) != root  # no such leaf
    with pytest.raises(ValueError, match="outside"):
        root_of(leaves[0], 4, 4, paths[0])


async def test_requests_of_one_turn_share_a_signature_and_each_verifies() -> None:
    s = signer()
    batch = BatchSigner(s)
    docs = await asyncio.gather(*(batch.sign(f"doc {i}".encode()) for i in range(50)))
    assert batch.signatures == 1
    verifier = Verifier("map", s.pins)
    assert [verifier.open(d) for d in docs] == [f"doc {i}".encode() for i in range(50)]
    lone = await batch.sign(b"alone")
    assert lone.batch is None
    assert batch.signatures == 2


def test_a_batch_proof_is_bounded_on_the_wire() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"index": 0, "size": 2, "path": [b"x" * 32] * 21}, BatchProof)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"index": 0, "size": 1, "path": []}, BatchProof)
