"""The clearing-house client's decisions, sans-IO: what to log, what an answer means, when a
receipt is refused.

The node's evidence client (``agentd.services.clearing``) keeps its requests in the database
and sends them through the outbox; every judgement it makes about them is here, as plain
functions over plain values, so each branch — above all those that turn away a forged or
malformed answer — is tested without a network:

=====================  =========================================================================
answer to a request    meaning (``judge``)
=====================  =========================================================================
``rejection``          ``Refused(code, message)``; ``MALFORMED_MESSAGE`` if it holds no text code
the expected reply      ``None``: apply it (``create_process``/``log`` → ``processed``,
                       ``log_batch`` → ``processed_batch``, ``query``/``get``/``keys`` → ``result``)
any other action       ``Refused(MALFORMED_MESSAGE)``: the request failed, nothing is stored
=====================  =========================================================================

A ``processed_batch`` is read by ``batch_results``: one result per entry (a receipt token, or
the entry's refusal), or ``MalformedAnswer`` and nothing of it applies. A receipt is then
checked against the clearing house's JWKS (``verdict``, ``receipt_status``): ``valid``,
``invalid`` (forged, or not what we asked to log: the caller gets ``RECEIPT_INVALID``), or
``unchecked`` while the signing key is not known yet (a ``keys`` request fetches it).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import clearing as ch
from protocol import receipts as rc
from protocol.codec import canonical

MALFORMED = ch.Reason.MALFORMED_MESSAGE.value
RECEIPT_INVALID = "RECEIPT_INVALID"
EXPECTED_REPLY = {"create_process": "processed", "log": "processed",
                  "log_batch": "processed_batch", "query": "result", "get": "result",
                  "keys": "result"}
# A receipt's verified claims, why it failed, or None while no JWKS is stored to check it
Verdict = dict[str, Any] | rc.ReceiptError | None
LOG_MODES = ("full", "header", "hash")


@dataclass(frozen=True)
class Refused:
    """The clearing house (or the answer's shape) refused a request or entry."""

    code: str
    message: str


class MalformedAnswer(ValueError):
    """An answer that cannot be applied at all; the text says what is wrong with it."""


# -- what to log ------------------------------------------------------------------------------


def _payload_bytes(payload: object) -> tuple[bytes, str]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode(), "text/plain; charset=utf-8"
    return canonical(payload), "application/msgpack"


def log_object(
    pid: str,
    payload: object,
    *,
    mode: str = "full",
    header: Mapping[str, Any] | None = None,
    payload_type: str | None = None,
) -> dict[str, Any]:
    """The ``log`` object for a user payload in one of ``LOG_MODES``.

    ``full`` sends header and payload; ``header`` sends the header and the payload's hash, so
    the clearing house never holds the data; ``hash`` sends the hash alone. Bytes go as they
    are, text as UTF-8, anything else as canonical msgpack (``CodecError`` on floats).
    """
    if mode not in LOG_MODES:
        raise ValueError(f"log mode {mode!r} is not one of {', '.join(LOG_MODES)}")
    if mode == "hash" and header:
        raise ValueError("log mode 'hash' sends the hash alone: drop the header or use 'header'")
    data, inferred_type = _payload_bytes(payload)
    obj: dict[str, Any] = {
        "pid": pid,
        "header": dict(header or {}),
        "payload_sha256": hashlib.sha256(data).hexdigest(),
        "payload_type": payload_type or inferred_type,
    }
    if mode == "full":
        obj["payload"] = data
    return obj


def evidence_object(pid: str, owners: Iterable[str], kind: str, payload: object, *,
                    ref: str | None, header: Mapping[str, Any] | None,
                    payload_type: str | None, mode: str, max_payload: int,
                    ) -> tuple[list[str], dict[str, Any], bool]:
    """The process owners (sorted, unique), the ``log`` object for a piece of evidence, and
    whether its payload was too large and is logged by its hash only.

    The header is ``{kind, ref, **header}`` (``ref`` defaults to ``pid``; none in ``hash``
    mode); a payload larger than ``max_payload`` is left out, so it is logged by its hash.
    Raises ``ValueError`` for a bad pid, owner, payload or mode: the caller's mistake.
    """
    owner_ids = list(_checked_process(pid, tuple(sorted(set(owners)))))
    ref = pid if ref is None else ref
    full_header = {} if mode == "hash" else {"kind": kind, "ref": ref, **(header or {})}
    obj = log_object(pid, payload, mode=mode, header=full_header, payload_type=payload_type)
    too_large = len(obj.get("payload") or b"") > max_payload
    if too_large:
        obj.pop("payload")
    return owner_ids, obj, too_large


@functools.lru_cache(maxsize=1024)
def _checked_process(pid: str, owners: tuple[str, ...]) -> tuple[str, ...]:
    """``owners``, once ``pid`` and they are known to make a valid process: a node logs a
    tally's chits under the same few, and checking each agent id again was ~1% of a lift."""
    try:
        ch.parse_create_process({"pid": pid, "owners": list(owners)})
    except ch.Rejection as exc:
        raise ValueError(f"evidence: {exc}") from exc
    return owners


def tally_pid(agent: str, tally: str) -> str:
    """The process a node logs a tally's evidence under: the tally's uuid in the node's own
    namespace (``AGENT/TALLY``), which only it may create (``protocol.clearing.namespace_of``).
    Anyone who saw the ticket can work out the bare uuid, and the partner knows it: under it,
    whoever created the process first owned it alone and every piece of the evidence was
    refused. Each partner's node logs under its own, owned by both partners' agents."""
    return f"{agent}/{tally}"


def entry_key(message_id: bytes, index: int) -> bytes:
    """The key of entry ``index`` of a ``log_batch``: its receipt's ``request`` and waiter."""
    return message_id + index.to_bytes(2, "big")


def expected_claims(house: str, pid: str, client: str, payload_sha256: str | None
                    ) -> dict[str, Any]:
    """What a receipt for a log request must say: issuer, process, client and payload."""
    return {"iss": house, "process_id": pid, "client_id": client,
            "payload_sha256": payload_sha256}


# -- what an answer means -------------------------------------------------------------------


def refusal_of(obj: Mapping[str, Any], what: str) -> Refused:
    """The IDS code and message of a ``rejection`` (or a refused batch entry);
    ``MALFORMED_MESSAGE`` when it holds no text code and message."""
    code, message = obj.get("code"), obj.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return Refused(MALFORMED, f"the {what} is malformed: {dict(obj)!r:.200}")
    return Refused(code, message)


def refusal_text(refused: Refused, pid: str, client: str) -> str:
    """What the refusal of ``client``'s evidence under ``pid`` says (to the log and to
    ``receipts.verify``): the IDS code and message and, for ``NOT_AUTHORIZED``, what it means.
    The evidence's process exists and ``client`` is not among its owners, so another agent
    created it first and nothing ``client`` logs under it will be taken; a clearing house
    that keeps agent namespaces lets nobody else create one in ``client``'s (``AGENT/...``),
    so one that did lacks the rule."""
    text = f"{refused.code}: {refused.message}"
    if refused.code != ch.Reason.NOT_AUTHORIZED.value:
        return text
    text += (f" (another agent created the process {pid!r} first, without this node as an "
             "owner: nothing this node logs under it is taken")
    if ch.namespace_of(pid) == client:
        text += ("; the pid is in this node's namespace, which a clearing house that keeps "
                 "agent namespaces lets nobody else create: this one does not, upgrade it")
    return text + ")"


def judge(request: str, action: str, obj: Mapping[str, Any]) -> Refused | None:
    """What answer ``action`` (with ``obj``) to a ``request`` means: None when it is the
    expected reply (apply it), else the refusal the request ends with."""
    if action == "rejection":
        return refusal_of(obj, "rejection")
    expected = EXPECTED_REPLY.get(request, "result")
    if action != expected:
        return Refused(MALFORMED, f"the clearing house answered {request} with {action}")
    receipt = obj.get("receipt") if action == "processed" else None
    if isinstance(receipt, str) and len(receipt) > rc.MAX_RECEIPT:
        return Refused(MALFORMED, f"the receipt is {len(receipt)} characters, more than a "
                       f"receipt's {rc.MAX_RECEIPT}")
    return None


def batch_results(obj: Mapping[str, Any], count: int) -> tuple[str | None, list[str | Refused]]:
    """Read a ``processed_batch`` answering ``count`` entries: the signed batch text and,
    per entry in order, its receipt part or its refusal. ``MalformedAnswer`` when the
    answer has the wrong number or shape of results, or receipts without their texts."""
    results = obj.get("results")
    if (not isinstance(results, list) or len(results) != count
            or not all(isinstance(result, dict) for result in results)):
        raise MalformedAnswer(f"processed_batch does not hold {count} result maps")
    signed = obj.get("signed")
    parts = [result["entry"] for result in results if "entry" in result]
    if parts and (not isinstance(signed, str) or not all(isinstance(p, str) for p in parts)):
        raise MalformedAnswer("processed_batch has receipts but no signed batch or entry text")
    if parts and (len(signed) > rc.MAX_SIGNED or max(map(len, parts)) > rc.MAX_ENTRY_PART):
        # refused unstored: each receipt repeats the signed text, so 1 MB of it made 256 MB
        raise MalformedAnswer(f"processed_batch's signed text or an entry's part is longer "
                              f"than a receipt's ({rc.MAX_SIGNED} and {rc.MAX_ENTRY_PART} "
                              "characters)")
    out: list[str | Refused] = [result["entry"] if "entry" in result
                                else refusal_of(result, "result") for result in results]
    return (signed if parts else None), out


def batch_verdicts(signed: str | None, parts: Sequence[str], jwks: Mapping[str, Any] | None,
                   expects: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    """The verdict on each receipt part of a batch (all None while no JWKS is stored)."""
    if jwks is None or not parts or signed is None:
        return [None] * len(parts)
    return list(rc.verify_batch(signed, list(parts), jwks, list(expects)))


# -- when a receipt is refused ----------------------------------------------------------------


def verdict(token: object, jwks: Mapping[str, Any] | None, expect: Mapping[str, Any]
            ) -> Verdict:
    """A receipt's claims, or why it fails; None while no JWKS is stored to check it."""
    if jwks is None:
        return None
    try:
        return rc.verify_receipt(token, jwks, expect)
    except rc.ReceiptError as exc:
        return exc


def receipt_status(verdict: Verdict, *, refresh: bool) -> tuple[str, str | None, dict | None]:
    """(status, problem, claims) of a receipt: ``unchecked`` while no key is known (with
    ``refresh``, also when the stored JWKS lacks the signing key: it is fetched again),
    ``invalid`` with the fault, or ``valid`` with the verified claims."""
    if isinstance(verdict, rc.ReceiptError):
        if refresh and verdict.fault is rc.ReceiptFault.UNKNOWN_KEY:
            return "unchecked", None, None
        return "invalid", f"{verdict.fault.value}: {verdict}", None
    if verdict is None:
        return "unchecked", None, None
    return "valid", None, verdict


def receipt_answer(token: str, claims: dict | None, problem: str | None
                   ) -> dict[str, Any] | Refused:
    """What the caller waiting for a checked receipt gets: the receipt, or its refusal."""
    if claims is None:
        return Refused(RECEIPT_INVALID, f"the receipt is invalid: {problem}")
    return {"pid": claims["process_id"], "seq": claims["seq"],
            "document_id": claims["document_id"], "receipt": token}


MAX_JWKS_KEYS = 256  # keys kept for one clearing house: it rotates its key rarely


def merge_jwks(old: Mapping[str, Any] | None, keys: object) -> dict[str, Any] | None:
    """The stored JWKS with a fresh one's keys added (every key ever seen is kept, so old
    receipts keep verifying); None when the answer holds no key list. Only Ed25519 keys
    whose ``kid`` is their thumbprint are kept, as exactly those members, and at most
    ``MAX_JWKS_KEYS`` (the ones kept already first): a house's answer cannot make us store
    or parse more."""
    if not isinstance(keys, list):
        return None
    merged: dict[str, dict[str, str]] = {}
    kept = (old or {"keys": []})["keys"][:MAX_JWKS_KEYS]
    for jwk in map(rc.jwk_key, [*kept, *keys[:MAX_JWKS_KEYS]]):
        if jwk is not None and len(merged) < MAX_JWKS_KEYS:
            merged.setdefault(jwk["kid"], jwk)
    return {"keys": list(merged.values())}
