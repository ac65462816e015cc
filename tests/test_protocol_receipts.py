"""Receipts: batch signing, each receipt verifying alone, every way one can be wrong."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol import receipts as rc
from protocol.clearing_chain import ZERO_HASH
from protocol.codec import CodecError, canonical, pack, unpack
from protocol.keys import SigningKey, b64u, unb64u
from tests.chaindata import (
    BOB,
    CAROL,
    CH_AGENT,
    RECEIPT_KEY,
    T0,
    chain,
    keyring,
)


def receipt_fault(fault: rc.ReceiptFault, token: object, jwks: Any, **kwargs: Any) -> str:
    with pytest.raises(rc.ReceiptError) as info:
        rc.verify_receipt(token, jwks, **kwargs)
    assert info.value.fault is fault, info.value
    return str(info.value)


def disclose(token: str, *, raw: bool = False) -> tuple[str, dict[str, Any]]:
    """A receipt's signed batch JWS and its decoded entry part ``{claims, index, proof}``:
    ``claims`` unpacked to a dict for convenience, or (``raw``) the bytes exactly as carried."""
    signed, part = token.split("~")
    disclosed = unpack(unb64u(part))
    assert isinstance(disclosed, dict) and isinstance(disclosed["claims"], bytes), disclosed
    if raw:
        return signed, disclosed
    return signed, {**disclosed, "claims": unpack(disclosed["claims"])}


def attach(signed: str, disclosed: dict[str, Any], *, raw: bool = False) -> str:
    """A receipt of ``signed`` and an entry part ``disclosed`` (encoded as the server does):
    dict ``claims`` are packed canonically unless ``raw``; anything else goes as it is."""
    claims = disclosed.get("claims")
    if isinstance(claims, dict) and not raw:
        disclosed = {**disclosed, "claims": canonical(claims)}
    return f"{signed}~{b64u(pack(disclosed))}"


def signed_claims(token: str) -> dict[str, Any]:
    return json.loads(unb64u(token.split("~")[0].split(".")[1]))


def forge_batch(
    claims: list[dict[str, Any] | bytes],
    key: SigningKey = RECEIPT_KEY,
    kid: str | None = None,
    drop: tuple[str, ...] = (),
    **changes: Any,
) -> list[str]:
    """Receipts of ``claims`` built here by the format's rules (a dict packed canonically,
    bytes carried as they are), with the signed batch claims changed by ``changes``
    (``drop``: left out) and signed by ``key`` under ``kid``."""
    packed = [one if isinstance(one, bytes) else canonical(one) for one in claims]
    levels = merkle.tree([merkle.leaf_hash(one) for one in packed])
    batch = {
        "iss": CH_AGENT,
        "iat": max(unpack(one)["timestamp"] for one in packed) // 1000,
        "version": rc.RECEIPT_VERSION,
        "batch_root": merkle.root(levels).hex(),
        "batch_size": len(packed),
        **changes,
    }
    batch = {name: value for name, value in batch.items() if name not in drop}
    signed = jwt.encode(
        batch, key.private_key, algorithm="EdDSA", headers={"kid": kid or rc.thumbprint(key.public)}
    )
    return [
        attach(
            signed,
            {"claims": one, "index": index, "proof": b"".join(merkle.proof(levels, index))},
        )
        for index, one in enumerate(packed)
    ]


def test_thumbprint_matches_rfc_8037() -> None:
    key = SigningKey(unb64u("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"))
    assert b64u(key.public) == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert rc.thumbprint(key.public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_a_receipt_restates_its_entry_and_verifies() -> None:
    ring = keyring()
    entry = chain(2)[1]
    [token] = ring.receipts([entry])
    signed, disclosed = disclose(token)
    header = jwt.get_unverified_header(signed)
    assert (header["alg"], header["kid"]) == ("EdDSA", rc.thumbprint(RECEIPT_KEY.public))
    assert disclosed == {"claims": rc.entry_claims(entry), "index": 0, "proof": b""}
    # on the wire: the claims as canonical msgpack bytes, the proof as bytes (none for one)
    packed = canonical(rc.entry_claims(entry))
    assert disclose(token, raw=True)[1] == {"claims": packed, "index": 0, "proof": b""}
    assert token.split("~")[1] == b64u(pack({"claims": packed, "index": 0, "proof": b""}))
    claims = rc.verify_receipt(token, ring.jwks(), expect=rc.entry_claims(entry))
    assert claims == {
        "iss": CH_AGENT,
        "iat": entry["timestamp"] // 1000,
        "version": rc.RECEIPT_VERSION,
        **rc.entry_claims(entry),
    }
    assert claims["document_id"] == claims["entry_hash"] == entry["entry_hash"]
    assert claims["prev_hash"] == chain(1)[0]["entry_hash"]


def test_a_batch_shares_one_signature_and_each_receipt_verifies_alone() -> None:
    ring = keyring()
    entries = chain(5, pid="p1")[2:] + chain(2, pid="p2")
    entries[-1] = {**entries[-1], "timestamp": T0 + 9_999}  # the newest entry sets iat
    tokens = ring.receipts(entries)
    assert len(tokens) == len(entries)
    assert len({token.split("~")[0] for token in tokens}) == 1
    assert signed_claims(tokens[0])["batch_size"] == len(entries)
    for index, (token, entry) in enumerate(zip(tokens, entries, strict=True)):
        assert disclose(token)[1]["index"] == index
        claims = rc.verify_receipt(token, ring.jwks(), expect=rc.entry_claims(entry))
        assert claims == {
            "iss": CH_AGENT,
            "iat": (T0 + 9_999) // 1000,
            "version": rc.RECEIPT_VERSION,
            **rc.entry_claims(entry),
        }
        assert rc.receipt_claims_unverified(token) == rc.entry_claims(entry)


def test_a_batch_needs_an_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        keyring().receipts([])


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 17), st.data())
def test_every_receipt_of_any_batch_size_verifies(size: int, data: st.DataObject) -> None:
    ring = keyring()
    entries = chain(size)
    tokens = ring.receipts(entries)
    index = data.draw(st.integers(0, size - 1))
    claims = rc.verify_receipt(tokens[index], ring.jwks(), expect=rc.entry_claims(entries[index]))
    assert claims["seq"] == index + 1
    assert claims["iat"] == entries[-1]["timestamp"] // 1000
    _, disclosed = disclose(tokens[index])
    assert disclosed["index"] == index
    if size > 1:  # and another receipt of the batch does not pass for this entry's
        other = data.draw(st.integers(0, size - 1).filter(lambda n: n != index))
        receipt_fault(
            rc.ReceiptFault.MISMATCH,
            tokens[other],
            ring.jwks(),
            expect=rc.entry_claims(entries[index]),
        )


def test_a_receipt_verifies_with_pyjwt_and_a_merkle_proof() -> None:
    ring = keyring()
    entries = chain(6)
    jwk = jwt.PyJWK(ring.jwks()["keys"][0])
    for entry, token in zip(entries, ring.receipts(entries), strict=True):
        signed, encoded = token.split("~")  # encoded: unpadded base64url of a msgpack map
        batch = jwt.decode(signed, jwk.key, algorithms=["EdDSA"])
        assert set(batch) == {"iss", "iat", "version", "batch_root", "batch_size"}
        assert (batch["iss"], batch["version"], batch["batch_size"]) == (
            CH_AGENT,
            rc.RECEIPT_VERSION,
            6,
        )
        part = msgpack.unpackb(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        assert part == disclose(token, raw=True)[1]
        proof = part["proof"]
        assert isinstance(proof, bytes) and len(proof) % 32 == 0
        leaf = hashlib.sha256(b"\x00" + part["claims"]).digest()  # the bytes as carried
        path = [proof[at : at + 32] for at in range(0, len(proof), 32)]
        reached = merkle.root_from_proof(leaf, part["index"], batch["batch_size"], path)
        assert reached.hex() == batch["batch_root"]
        assert rc.verify_receipt(token, ring.jwks(), expect=rc.entry_claims(entry)) == {
            "iss": batch["iss"],
            "iat": batch["iat"],
            "version": batch["version"],
            **msgpack.unpackb(part["claims"]),
        }


def not_base64url(text: str, edit: str) -> str:
    """``text`` with a character that base64url has not: in place of one, or added (four, so
    that a lenient decoder that skips it would read the original)."""
    return text[:8] + "!" + text[9:] if edit == "replaced" else text[:8] + "!!!!" + text[8:]


@pytest.mark.parametrize("edit", ["replaced", "inserted"])
@pytest.mark.parametrize(
    "segment",
    [
        "header",
        "claims",
        "signature",
        "entry",
    ],
)
def test_a_segment_that_is_not_strict_base64url_is_malformed(segment: str, edit: str) -> None:
    token = keyring().receipts(chain(2))[1]
    signed, part = token.split("~")
    parts = signed.split(".")
    if segment == "entry":
        part = not_base64url(part, edit)
    else:
        at = ["header", "claims", "signature"].index(segment)
        parts[at] = not_base64url(parts[at], edit)
    receipt_fault(rc.ReceiptFault.MALFORMED, f"{'.'.join(parts)}~{part}", keyring().jwks())


@pytest.mark.parametrize("edit", ["replaced", "inserted"])
def test_signed_claims_that_are_not_strict_base64url_are_malformed(edit: str) -> None:
    ring = keyring()
    signed, disclosed = disclose(ring.receipts(chain(1))[0])
    header, body, _ = signed.split(".")
    body = not_base64url(body, edit)
    signature = b64u(RECEIPT_KEY.private_key.sign(f"{header}.{body}".encode()))
    token = attach(f"{header}.{body}.{signature}", disclosed)
    assert "signed batch does not decode" in receipt_fault(
        rc.ReceiptFault.MALFORMED, token, ring.jwks()
    )


DROP = object()  # in a change: leave the member out
CLAIMS = rc.entry_claims(chain(3)[1])  # the entry of the receipt the shape tests edit
PACKED = canonical(CLAIMS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"proof": DROP}, "proof is not a run of 32-byte hashes"),
        ({"proof": None}, "proof is not a run of 32-byte hashes"),
        ({"proof": b64u(bytes(64))}, "proof is not a run of 32-byte hashes"),  # text, not bin
        ({"proof": [bytes(32), bytes(32)]}, "proof is not a run of 32-byte hashes"),
        ({"proof": bytes(31)}, "proof is not a run of 32-byte hashes"),
        ({"proof": bytes(65)}, "proof is not a run of 32-byte hashes"),
        ({"index": DROP}, "no integer index"),
        ({"index": "0"}, "no integer index"),
        ({"index": True}, "no integer index"),
        ({"index": False}, "no integer index"),
        ({"index": 1.0}, "no integer index"),
        ({"index": None}, "no integer index"),
        ({"index": 3}, "not within a batch of 3"),
        ({"index": -1}, "not within a batch of 3"),
        ({"index": 2**64 - 1}, "not within a batch of 3"),
        ({"index": -(2**63)}, "not within a batch of 3"),
        ({"claims": DROP}, "no packed claims"),
        ({"claims": None}, "no packed claims"),
        ({"claims": [1]}, "no packed claims"),
        ({"claims": CLAIMS}, "no packed claims"),  # a map, not the bytes of one
        ({"claims": b64u(PACKED)}, "no packed claims"),  # text, not bin
        ({"claims": json.dumps(CLAIMS)}, "no packed claims"),  # the JSON format before
        ({"claims": b""}, "the claims do not decode"),
        ({"claims": b"\xc1"}, "the claims do not decode"),  # a byte msgpack never uses
        ({"claims": PACKED[:-1]}, "the claims do not decode"),
        ({"claims": PACKED + b"\xc0"}, "the claims do not decode"),
        ({"claims": json.dumps(CLAIMS).encode()}, "the claims do not decode"),
        ({"claims": pack({1: "x"})}, "the claims do not decode"),
        ({"claims": pack({b"seq": 1})}, "the claims do not decode"),
        ({"claims": pack(msgpack.ExtType(1, b"x"))}, "the claims do not decode"),
        ({"claims": b"\xa2\xff\xfe"}, "the claims do not decode"),  # text that is not UTF-8
        ({"claims": pack([1])}, "the claims are not a map"),
        ({"claims": pack(None)}, "the claims are not a map"),
        ({"claims": pack(PACKED)}, "the claims are not a map"),  # packed twice
    ],
)
def test_an_entry_part_out_of_shape_is_malformed(change: dict[str, Any], reason: str) -> None:
    ring = keyring()
    token = ring.receipts(chain(3))[1]
    signed, disclosed = disclose(token, raw=True)
    assert disclosed["claims"] == PACKED
    rc.verify_receipt(attach(signed, disclosed, raw=True), ring.jwks(), expect=CLAIMS)  # control
    changed = {name: value for name, value in {**disclosed, **change}.items() if value is not DROP}
    token = attach(signed, changed, raw=True)
    assert reason in receipt_fault(rc.ReceiptFault.MALFORMED, token, ring.jwks())


@pytest.mark.parametrize("cut", ["first", "last", "extra"])
def test_a_proof_of_the_wrong_length_is_malformed(cut: str) -> None:
    ring = keyring()
    signed, disclosed = disclose(ring.receipts(chain(5))[0])
    proof = disclosed["proof"]
    assert len(proof) == 3 * 32
    proof = {"first": proof[32:], "last": proof[:-32], "extra": proof + bytes(32)}[cut]
    token = attach(signed, {**disclosed, "proof": proof})
    message = receipt_fault(rc.ReceiptFault.MALFORMED, token, ring.jwks())
    assert ("too many" if cut == "extra" else "too few") in message


@pytest.mark.parametrize("part", ["header", "signed batch"])
def test_a_header_or_signed_batch_that_is_no_json_object_is_malformed(part: str) -> None:
    ring = keyring()
    token = ring.receipts(chain(1))[0]
    header = b64u(json.dumps({"alg": "EdDSA", "kid": ring.kid}).encode())
    body = b64u(json.dumps(signed_claims(token)).encode())
    entry_part = token.split("~")[1]
    rc.verify_receipt(  # the control: the token as built here verifies
        f"{header}.{body}.{b64u(RECEIPT_KEY.private_key.sign(f'{header}.{body}'.encode()))}"
        f"~{entry_part}",
        ring.jwks(),
    )
    if part == "header":
        header = b64u(b'["EdDSA"]')
    else:
        body = b64u(b"[1, 2]")
    signature = b64u(RECEIPT_KEY.private_key.sign(f"{header}.{body}".encode()))
    token = f"{header}.{body}.{signature}~{entry_part}"
    message = receipt_fault(rc.ReceiptFault.MALFORMED, token, ring.jwks())
    assert f"the {part} does not decode: not an object" in message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the entry part does not decode"),
        (b"\xc1", "the entry part does not decode"),
        (b'{"claims": {}, "index": 0, "proof": ""}', "the entry part does not decode"),  # JSON
        (pack({"claims": PACKED, "index": 1, "proof": bytes(64)}) + b"\xc0", "does not decode"),
        (pack({"claims": PACKED, "index": 1, "proof": bytes(64)})[:-1], "does not decode"),
        (pack({1: PACKED}), "the entry part does not decode"),
        (pack(msgpack.ExtType(1, b"x")), "the entry part does not decode"),
        (pack([PACKED, 1, bytes(64)]), "the entry part is not a map"),
        (pack(None), "the entry part is not a map"),
        (pack(b64u(PACKED)), "the entry part is not a map"),
    ],
)
def test_an_entry_part_that_is_no_msgpack_map_is_malformed(data: bytes, reason: str) -> None:
    ring = keyring()
    signed, part = ring.receipts(chain(3))[1].split("~")
    assert unb64u(part) == pack({"claims": PACKED, "index": 1, "proof": unb64u(part)[-64:]})
    message = receipt_fault(rc.ReceiptFault.MALFORMED, f"{signed}~{b64u(data)}", ring.jwks())
    assert reason in message


NESTED = b"\x91" * 1_100 + b"\xc0"  # msgpack [[[...[nil]...]]], deeper than msgpack allows
NESTED_MAPS = b"\x81\xa1a" * 1_100 + b"\xc0"  # msgpack {"a": {"a": ... nil}}


@pytest.mark.parametrize("where", ["header", "entry part", "entry part maps", "claims", "index"])
def test_deep_nesting_is_malformed_not_a_crash(where: str) -> None:
    ring = keyring()
    signed, part = ring.receipts(chain(1))[0].split("~")
    disclosed = unpack(unb64u(part))
    if where == "header":  # JSON
        token = f"{b64u(b'[' * 100_000)}.x.y~{part}"
        receipt_fault(rc.ReceiptFault.MALFORMED, token, ring.jwks())
        return
    if where == "entry part":
        packed = NESTED
    elif where == "entry part maps":
        packed = NESTED_MAPS
    elif where == "claims":
        packed = pack({**disclosed, "claims": NESTED})
    else:  # deep inside the entry part's map, where the index belongs (packed last: nil)
        packed = pack({"claims": disclosed["claims"], "proof": b"", "index": None})
        assert packed.endswith(b"\xa5index\xc0")
        packed = packed[:-1] + NESTED
    with pytest.raises(msgpack.StackError):  # the test's premise: too deep for msgpack
        msgpack.unpackb(NESTED if where == "claims" else packed)
    token = f"{signed}~{b64u(packed)}"
    message = receipt_fault(rc.ReceiptFault.MALFORMED, token, ring.jwks())
    what = "the claims do" if where == "claims" else "the entry part does"
    assert f"{what} not decode" in message
    assert rc.receipt_claims_unverified(token) == {}


def test_jwks_publishes_ed25519_keys_by_thumbprint() -> None:
    assert keyring().jwks() == {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64u(RECEIPT_KEY.public),
                "kid": rc.thumbprint(RECEIPT_KEY.public),
                "alg": "EdDSA",
                "use": "sig",
            }
        ]
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("process_id", "p2"),
        ("document_id", "ab" * 32),
        ("seq", 3),
        ("timestamp", T0 + 5),
        ("client_id", CAROL),
        ("payload_sha256", "cd" * 32),
        ("entry_hash", "ef" * 32),
        ("prev_hash", ZERO_HASH),
        ("note", "added"),
    ],
)
def test_a_tampered_entry_claim_breaks_the_signature(name: str, value: Any) -> None:
    ring = keyring()
    entries = chain(3)
    signed, disclosed = disclose(ring.receipts(entries)[1])
    assert disclosed["claims"].get(name) != value
    forged = attach(signed, {**disclosed, "claims": {**disclosed["claims"], name: value}})
    message = receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, forged, ring.jwks())
    assert "a claim was altered" in message


@pytest.mark.parametrize(
    ("change", "fault", "reason"),
    [
        ({"seq": 1.5}, rc.ReceiptFault.BAD_CLAIMS, "claim seq is a float, not int"),
        ({"timestamp": None}, rc.ReceiptFault.BAD_CLAIMS, "claim timestamp is a NoneType"),
        ({"client_id": b"x"}, rc.ReceiptFault.BAD_CLAIMS, "claim client_id is a bytes"),
        ({"seq": 2**64 - 1}, rc.ReceiptFault.BAD_SIGNATURE, "a claim was altered"),
        ({"seq": -(2**63)}, rc.ReceiptFault.BAD_SIGNATURE, "a claim was altered"),
        ({"note": 1.5}, rc.ReceiptFault.BAD_SIGNATURE, "a claim was altered"),
        ({"note": [1, {"a": b"x"}]}, rc.ReceiptFault.BAD_SIGNATURE, "a claim was altered"),
    ],
)
def test_entry_claims_outside_canonical_values_are_refused(
    change: dict[str, Any], fault: rc.ReceiptFault, reason: str
) -> None:
    ring = keyring()
    signed, disclosed = disclose(ring.receipts(chain(1))[0], raw=True)
    claims = {**unpack(disclosed["claims"]), **change}
    forged = attach(signed, {**disclosed, "claims": pack(dict(sorted(claims.items())))})
    assert reason in receipt_fault(fault, forged, ring.jwks())
    with pytest.raises(CodecError):  # integers beyond 64 bits cannot even be carried
        pack({**claims, "seq": 2**70})


def test_any_changed_byte_of_the_claims_is_detected() -> None:
    ring = keyring()
    signed, disclosed = disclose(ring.receipts(chain(3))[1], raw=True)
    packed = disclosed["claims"]
    seen: set[rc.ReceiptFault] = set()
    for at in range(len(packed)):
        for mask in (0x01, 0x02, 0x20, 0x80, 0xFF):
            altered = packed[:at] + bytes([packed[at] ^ mask]) + packed[at + 1 :]
            forged = attach(signed, {**disclosed, "claims": altered})
            with pytest.raises(rc.ReceiptError) as info:
                rc.verify_receipt(forged, ring.jwks())
            try:
                claims = unpack(altered)
            except CodecError:
                claims = None
            if not isinstance(claims, dict):  # no longer decodes to a map: plain to see
                expected = rc.ReceiptFault.MALFORMED
            elif not all(
                type(claims.get(name)) is type(value) for name, value in CLAIMS.items()
            ):  # a claim gone or of another type
                expected = rc.ReceiptFault.BAD_CLAIMS
            else:
                expected = rc.ReceiptFault.BAD_SIGNATURE
                assert "a claim was altered" in str(info.value)
            assert info.value.fault is expected, (at, mask, claims, info.value)
            seen.add(expected)
    assert seen == {
        rc.ReceiptFault.MALFORMED,
        rc.ReceiptFault.BAD_CLAIMS,
        rc.ReceiptFault.BAD_SIGNATURE,
    }


def test_the_leaf_hashes_the_claims_bytes_as_carried() -> None:
    ring = keyring()
    entry = chain(3)[1]
    signed, disclosed = disclose(ring.receipts([entry])[0], raw=True)
    claims = rc.entry_claims(entry)
    assert disclosed["claims"] == canonical(claims) and b"\xa3seq\x02" in disclosed["claims"]
    wider = disclosed["claims"].replace(b"\xa3seq\x02", b"\xa3seq\xcf" + (2).to_bytes(8, "big"))
    reordered = pack(dict(reversed(sorted(claims.items()))))
    for other in (wider, reordered):  # the same claims encoded otherwise are not the ones signed
        assert other != disclosed["claims"] and unpack(other) == claims
        forged = attach(signed, {**disclosed, "claims": other})
        message = receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, forged, ring.jwks())
        assert "a claim was altered" in message
        assert rc.receipt_claims_unverified(forged) == claims
        # and signed as they are, they verify: nothing re-encodes them
        [token] = forge_batch([other])
        assert unb64u(token.split("~")[1]) == pack({"claims": other, "index": 0, "proof": b""})
        assert rc.verify_receipt(token, ring.jwks(), expect=claims)["seq"] == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_root", "00" * 32),
        ("batch_size", 4),
        ("iss", BOB),
        ("iat", 0),
        ("version", rc.RECEIPT_VERSION),  # same value, re-encoded with a space: still altered
    ],
)
def test_a_tampered_signed_claim_breaks_the_signature(name: str, value: Any) -> None:
    ring = keyring()
    token = ring.receipts(chain(3))[2]
    signed, part = token.split("~")
    header, _, signature = signed.split(".")
    claims = {**signed_claims(token), name: value}
    body = b64u(json.dumps(claims).encode())  # json.dumps puts spaces after ',' and ':'
    forged = f"{header}.{body}.{signature}~{part}"
    message = receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, forged, ring.jwks())
    assert "a claim was altered" in message


def test_swapping_index_proof_or_claims_within_a_batch_fails() -> None:
    ring = keyring()
    entries = chain(6)
    parts = [disclose(token, raw=True)[1] for token in ring.receipts(entries)]
    signed = ring.receipts(entries)[0].split("~")[0]
    faults = (rc.ReceiptFault.BAD_SIGNATURE, rc.ReceiptFault.MALFORMED)
    for i, mine in enumerate(parts):
        for j, theirs in enumerate(parts):
            if i == j:  # the control: as signed, each verifies
                rc.verify_receipt(attach(signed, mine), ring.jwks(), rc.entry_claims(entries[i]))
                continue
            for swapped in (
                {**mine, "index": theirs["index"]},
                {**mine, "proof": theirs["proof"]},
                {**theirs, "claims": mine["claims"]},
            ):
                with pytest.raises(rc.ReceiptError) as info:
                    rc.verify_receipt(attach(signed, swapped), ring.jwks())
                assert info.value.fault in faults, (i, j, info.value)


def test_an_entry_part_on_another_batch_fails() -> None:
    ring = keyring()
    first, second = ring.receipts(chain(3, pid="p1")), ring.receipts(chain(3, pid="p2"))
    for mine, theirs in zip(first, second, strict=True):
        forged = f"{theirs.split('~')[0]}~{mine.split('~')[1]}"
        message = receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, forged, ring.jwks())
        assert "a claim was altered" in message


def test_a_receipt_signed_by_another_key_has_an_unknown_kid() -> None:
    intruder = keyring(SigningKey(bytes([7]) * 32))
    message = receipt_fault(
        rc.ReceiptFault.UNKNOWN_KEY, intruder.receipts(chain(1))[0], keyring().jwks()
    )
    assert intruder.kid in message


def test_a_jwks_entry_whose_key_does_not_match_its_kid_is_refused() -> None:
    ring = keyring()
    impostor = SigningKey(bytes([7]) * 32)
    jwks = {"keys": [{**ring.jwks()["keys"][0], "x": b64u(impostor.public)}]}
    claims = [rc.entry_claims(entry) for entry in chain(2)]
    relabelled = forge_batch(claims, key=impostor, kid=ring.kid)[1]
    assert jwt.get_unverified_header(relabelled.split("~")[0])["kid"] == ring.kid
    assert "thumbprint" in receipt_fault(rc.ReceiptFault.UNKNOWN_KEY, relabelled, jwks)


def test_every_truncation_of_a_receipt_is_malformed() -> None:
    ring = keyring()
    token = ring.receipts(chain(3))[1]
    signed = token.split("~")[0]
    jwks = ring.jwks()
    rc.verify_receipt(token, jwks)
    for length in range(len(token)):
        receipt_fault(rc.ReceiptFault.MALFORMED, token[:length], jwks)
    assert "truncated" in receipt_fault(rc.ReceiptFault.MALFORMED, signed, jwks)
    assert "3 '~'-separated parts" in receipt_fault(
        rc.ReceiptFault.MALFORMED, f"{token}~{token.split('~')[1]}", jwks
    )


def test_a_receipt_missing_its_last_character_says_it_is_truncated() -> None:
    ring = keyring()
    token = ring.receipts(chain(3))[1]
    assert "truncated" in receipt_fault(rc.ReceiptFault.MALFORMED, token[:-1], ring.jwks())


@pytest.mark.parametrize(
    "token", [None, b"a.b.c", "not a token", "a.b.c", "...", "a.b.c~d", "~", "..~", "a~b~c"]
)
def test_garbage_is_malformed(token: object) -> None:
    receipt_fault(rc.ReceiptFault.MALFORMED, token, keyring().jwks())


def test_a_receipt_for_another_process_or_entry_is_a_mismatch() -> None:
    ring = keyring()
    other = ring.receipts(chain(1, pid="p2"))[0]
    message = receipt_fault(
        rc.ReceiptFault.MISMATCH, other, ring.jwks(), expect=rc.entry_claims(chain(1)[0])
    )
    assert "process_id is 'p2', expected 'p1'" in message
    entries = chain(2)
    for token in (ring.receipts(entries[:1])[0], ring.receipts(entries)[0]):
        message = receipt_fault(
            rc.ReceiptFault.MISMATCH, token, ring.jwks(), expect=rc.entry_claims(entries[1])
        )
        assert "document_id" in message
    message = receipt_fault(rc.ReceiptFault.MISMATCH, other, ring.jwks(), expect={"iss": BOB})
    assert f"iss is {CH_AGENT!r}, expected {BOB!r}" in message


@pytest.mark.parametrize(
    ("batch", "entry", "reason"),
    [
        ({"version": 1}, {}, "receipt version 1 is not 2"),
        ({"version": True}, {}, "claim version is a bool"),
        ({"drop": ("iss",)}, {}, "signed claims missing: iss"),
        ({"iat": "1700000000"}, {}, "claim iat is a str"),
        ({"batch_size": 0}, {}, "batch root or size is invalid"),
        ({"batch_root": "AB" * 32}, {}, "batch root or size is invalid"),
        ({"batch_root": "ab" * 31}, {}, "batch root or size is invalid"),
        ({"batch_root": 7}, {}, "claim batch_root is a int"),
        ({}, {"seq": "1"}, "claim seq is a str"),
        ({}, {"client_id": None}, "claims missing: client_id"),
    ],
)
def test_claims_outside_the_receipt_format_are_refused(
    batch: dict[str, Any], entry: dict[str, Any], reason: str
) -> None:
    ring = keyring()
    claims = {**rc.entry_claims(chain(1)[0]), **entry}
    claims = {name: value for name, value in claims.items() if value is not None}
    token = forge_batch([claims], **batch)[0]
    assert reason in receipt_fault(rc.ReceiptFault.BAD_CLAIMS, token, ring.jwks())


def test_forged_batches_match_the_keyring_exactly() -> None:
    """The control for the tests above: ``forge_batch`` without changes is ``receipts``."""
    entries = chain(7)
    assert forge_batch([rc.entry_claims(entry) for entry in entries]) == keyring().receipts(entries)


def test_a_retired_key_still_verifies_old_receipts() -> None:
    old_ring = keyring()
    entries = chain(4)
    old_receipts = old_ring.receipts(entries[:2])
    new_ring = rc.Keyring(CH_AGENT, SigningKey(bytes([10]) * 32), (old_ring.current.public,))
    new_receipts = new_ring.receipts(entries[2:])
    assert [key["kid"] for key in new_ring.jwks()["keys"]] == [new_ring.kid, old_ring.kid]
    assert jwt.get_unverified_header(new_receipts[0].split("~")[0])["kid"] == new_ring.kid
    for token, entry in zip(old_receipts + new_receipts, entries, strict=True):
        rc.verify_receipt(token, new_ring.jwks(), expect=rc.entry_claims(entry))
    without_history = rc.Keyring(CH_AGENT, new_ring.current).jwks()
    for token in old_receipts:
        receipt_fault(rc.ReceiptFault.UNKNOWN_KEY, token, without_history)
    rc.verify_receipt(new_receipts[1], without_history, expect=rc.entry_claims(entries[3]))


@pytest.mark.parametrize("jwks", [{}, {"keys": []}, {"keys": None}, None])
def test_a_jwks_without_keys_verifies_nothing(jwks: Any) -> None:
    receipt_fault(rc.ReceiptFault.UNKNOWN_KEY, keyring().receipts(chain(1))[0], jwks)


def test_the_receipts_of_one_batch_are_signature_checked_once() -> None:
    ring = keyring()
    entries = chain(4)
    tokens = ring.receipts(entries)
    forged = forge_batch([rc.entry_claims(entry) for entry in entries], version=1)[0]
    signed, part = tokens[0].split("~")
    header, _, signature = signed.split(".")
    altered = {**signed_claims(tokens[0]), "batch_size": 5}
    tampered = f"{header}.{b64u(json.dumps(altered).encode())}.{signature}~{part}"
    rc._signed_batch.cache_clear()
    for _ in range(2):  # failures are not remembered: each is refused again
        receipt_fault(rc.ReceiptFault.BAD_CLAIMS, forged, ring.jwks())
        receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, tampered, ring.jwks())
    assert rc._signed_batch.cache_info().currsize == 0
    for token, entry in zip(tokens, entries, strict=True):
        rc.verify_receipt(token, ring.jwks(), expect=rc.entry_claims(entry))
    info = rc._signed_batch.cache_info()
    assert (info.currsize, info.hits, info.misses) == (1, 3, 5)
    receipt_fault(rc.ReceiptFault.BAD_SIGNATURE, tampered, ring.jwks())  # not excused by it
    intruder = keyring(SigningKey(bytes([7]) * 32)).jwks()
    receipt_fault(rc.ReceiptFault.UNKNOWN_KEY, tokens[1], intruder)


def test_unverified_claims_are_the_entry_claims_or_nothing() -> None:
    entries = chain(3)
    intruder = keyring(SigningKey(bytes([7]) * 32))
    for token, entry in zip(intruder.receipts(entries), entries, strict=True):
        assert rc.receipt_claims_unverified(token) == rc.entry_claims(entry)
    token = keyring().receipts(entries)[2]
    signed, disclosed = disclose(token)
    assert rc.receipt_claims_unverified(attach(signed, disclosed)) == rc.entry_claims(entries[2])
    for garbage in (
        None,
        "",
        "a.b.c",
        signed,
        f"{signed}~",
        f"{signed}~!!!!",
        f"{token}~x",
        f"{signed}~{b64u(b'[1]')}",
        f"{signed}~{b64u(NESTED)}",
        attach(signed, {**disclosed, "claims": [1]}),
        attach(signed, {**disclosed, "claims": {"seq": 3}}),
        attach(signed, {**disclosed, "claims": pack([1])}),
        attach(signed, {**disclosed, "claims": canonical(disclosed["claims"])[:-1]}),
        attach(signed, {**disclosed, "claims": disclosed["claims"]}, raw=True),  # a map, not bytes
        attach(signed, {**disclosed, "proof": b64u(disclosed["proof"])}),
        attach(signed, {**disclosed, "index": "2"}),
        f"{signed}~{b64u(json.dumps({**disclosed, 'proof': ''}).encode())}",  # the JSON format
    ):
        assert rc.receipt_claims_unverified(garbage) == {}, garbage


def test_an_entry_part_with_anything_beside_claims_index_and_proof_is_malformed() -> None:
    ring = keyring()
    signed, part = ring.receipts(chain(2))[1].split("~")
    padded = {**unpack(unb64u(part)), "junk": [1, 2]}
    message = receipt_fault(rc.ReceiptFault.MALFORMED, f"{signed}~{b64u(pack(padded))}",
                            ring.jwks())
    assert "holds junk beside claims, index and proof" in message


def test_an_oversized_receipt_is_refused_before_it_is_decoded() -> None:
    ring = keyring()
    signed, part = ring.receipts(chain(1))[0].split("~")
    for token in (f"{signed}~{part}{'A' * rc.MAX_ENTRY_PART}", f"{signed * 5}~{part}"):
        assert "more than a receipt's" in receipt_fault(rc.ReceiptFault.MALFORMED, token,
                                                        ring.jwks())


def outcome(result: dict[str, Any] | rc.ReceiptError) -> tuple[Any, ...]:
    if isinstance(result, rc.ReceiptError):
        return ("error", result.fault, str(result))
    return ("claims", result)


def each_alone(signed: str, parts: list[str], jwks: Any, expects: list[Any]) -> list[Any]:
    results = []
    for part, expect in zip(parts, expects, strict=True):
        try:
            results.append(rc.verify_receipt(f"{signed}~{part}", jwks, expect))
        except rc.ReceiptError as exc:
            results.append(exc)
    return results


TAMPERINGS = ["none", "claims byte", "swap proofs", "index", "drop last", "expect", "garbage"]


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 20), st.data())
def test_verify_batch_gives_each_receipt_the_verdict_it_gets_alone(
    size: int, data: st.DataObject
) -> None:
    ring = keyring()
    entries = chain(size)
    signed, parts = ring.sign(entries)
    expects: list[Any] = [rc.entry_claims(entry) for entry in entries]
    tampering = data.draw(st.sampled_from(TAMPERINGS))
    at = data.draw(st.integers(0, size - 1))
    if tampering == "claims byte":
        raw = unpack(unb64u(parts[at]))
        claims = bytearray(raw["claims"])
        claims[-1] ^= 1
        parts[at] = b64u(pack({**raw, "claims": bytes(claims)}))
    elif tampering == "swap proofs" and size > 1:
        other = (at + 1) % size
        mine, theirs = unpack(unb64u(parts[at])), unpack(unb64u(parts[other]))
        parts[at] = b64u(pack({**mine, "proof": theirs["proof"]}))
    elif tampering == "index":
        raw = unpack(unb64u(parts[at]))
        parts[at] = b64u(pack({**raw, "index": raw["index"] + size}))
    elif tampering == "drop last":
        parts, expects = parts[:-1], expects[:-1]
    elif tampering == "expect":
        expects[at] = {"process_id": "another"}
    elif tampering == "garbage":
        parts[at] = "not a receipt!"
    batch = rc.verify_batch(signed, parts, ring.jwks(), expects)
    alone = each_alone(signed, parts, ring.jwks(), expects)
    assert [outcome(r) for r in batch] == [outcome(r) for r in alone]
    if tampering == "none":
        assert all(isinstance(r, dict) for r in batch)


def test_verify_batch_with_a_bad_signature_or_unknown_key_fails_every_receipt() -> None:
    ring = keyring()
    signed, parts = ring.sign(chain(4))
    expects = [None] * 4
    head, body, _ = signed.split(".")
    forged = f"{head}.{body}.{b64u(bytes(64))}"
    for jwks, fault in ((ring.jwks(), rc.ReceiptFault.BAD_SIGNATURE),
                        (keyring(SigningKey(bytes([7]) * 32)).jwks(),
                         rc.ReceiptFault.UNKNOWN_KEY)):
        token = forged if fault is rc.ReceiptFault.BAD_SIGNATURE else signed
        results = rc.verify_batch(token, parts, jwks, expects)
        assert [r.fault for r in results if isinstance(r, rc.ReceiptError)] == [fault] * 4


def test_verify_batch_rebuilds_the_tree_once_instead_of_walking_each_proof(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ring = keyring()
    entries = chain(9)
    signed, parts = ring.sign(entries)

    def walked(*args: Any) -> bytes:
        raise AssertionError("an intact batch should not walk proofs one by one")

    monkeypatch.setattr(merkle, "root_from_proof", walked)
    results = rc.verify_batch(signed, parts, ring.jwks(), [rc.entry_claims(e) for e in entries])
    assert [r["seq"] for r in results] == list(range(1, 10))  # type: ignore[index]
