"""The clearing house (IDS Clearing House semantics): an evidence log with signed receipts.

Sans-IO: plain dicts in, plain dicts and decisions out. The caller's identity (the
Noise-authenticated agent id), the stored facts (a process's owners, its last entry) and the
time are parameters, so the storage layer stays dumb and every rule is unit-testable here.

Requests (envelope ``target`` = ``ch``), each with a parser that raises ``Rejection``:

    create_process{pid, owners?}                  parse_create_process -> decide_create
    log{pid, header, payload?, payload_sha256, payload_type}
                                                  parse_log -> authorize -> next_entry
    log_batch{entries: [log objects]}             parse_log_batch, then each entry as a log
    query{pid, page?, size?, sort?, date_from?, date_to?}
                                                  parse_query -> authorize -> query_result
    get{pid, id}                                  parse_get -> authorize -> get_result
    keys{}                                        parse_keys -> ("result", keyring.jwks())

Replies are ``(action, object)`` pairs: ``processed{receipt?}``,
``processed_batch{signed?, results}`` (``log_batch``: per entry in order ``{entry}``, whose
receipt is ``signed~entry``, or
``{code, message}``, each entry judged like a lone ``log`` and a refused one changing nothing),
``result{entries, total, page, size, has_more}`` (``get`` answers with a one-entry page,
``keys`` with the JWKS ``{keys}``) and ``rejection{code, message}`` from ``Rejection.reply()``.

The service runs each request inside one store transaction, e.g. for ``log``::

    request = parse_log(obj, max_payload=limit)
    new_owners = authorize("log", request["pid"], caller, store.owners(request["pid"]))
    if new_owners:
        store.create_process(request["pid"], new_owners)
    entry = next_entry(store.last_entry(request["pid"]), request, client_id=caller, now_ms=now)
    store.append(entry)
    reply = processed(keyring.receipts([entry])[0])

Choices (DESIGN §6 leaves them open):

- Hashes are 64 lowercase hex digits everywhere (wire, entries, receipt claims), so a receipt
  claim and a stored field compare as equal text, and JSON (RPC, JWS) carries them unchanged.
- Each process is a hash chain: ``seq`` from 1, ``prev_hash`` of seq 1 is ``ZERO_HASH``
  (64 zeros), ``entry_hash`` = SHA-256 of the canonical map of ``HASHED_FIELDS``. That list
  adds ``payload_type`` to DESIGN's, so no stored field can change undetected.
- An entry's time never precedes its predecessor's (``next_entry`` clamps a clock that went
  back), so the chain is ordered by time as well as by ``seq``.
- ``document_id`` is the entry hash: content-addressed, needs no randomness, and ``get`` on an
  id from another process is simply not found.
- Receipts are signed in batches: one EdDSA compact JWS (``kid`` the RFC 7638 thumbprint)
  signs ``iss``, ``iat``, ``version`` (the receipt format, ``RECEIPT_VERSION``) and the root
  of a Merkle tree (``protocol.merkle``) over the claims of every entry of one ``log_batch``
  (one entry for a ``log``). A receipt is ``<that JWS>~<base64url msgpack {claims, index,
  proof}>``: its entry's claims (canonical msgpack, the bytes its leaf hashes) and the
  inclusion proof that ties them to the signed root. So a batch costs one signature, a client
  verifies one per batch, and each receipt still proves its entry alone, with any JOSE
  library, msgpack and a dozen lines of hashing.
- Queries sort by ``seq``, newest first by default (as IDS does); dates are inclusive bounds,
  integer ms or ``YYYY-MM-DD`` (UTC days); no silent "last two weeks" window.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, Literal, TypedDict

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import merkle
from protocol.codec import CodecError, canonical, digest, pack, unpack
from protocol.keys import IdentityError, SigningKey, b64u, is_agent_id, unb64u

TARGET = "ch"
RESERVED_PID = "default"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OWNERS = 64
MAX_BATCH = 256
RECEIPT_VERSION = 2
ZERO_HASH = "0" * 64
LOG_MODES = ("full", "header", "hash")
HASHED_FIELDS = (
    "pid", "seq", "prev_hash", "timestamp", "client_id", "header", "payload_sha256", "payload_type",
)  # fmt: skip

_MAX_PID_LENGTH = 128
_MAX_TYPE_LENGTH = 255
_INT64_LIMIT = 2**63
_DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Reply = tuple[str, dict[str, Any]]


class Reason(StrEnum):
    """IDS rejection reason codes, sent as text in ``rejection{code}``."""

    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    BAD_PARAMETERS = "BAD_PARAMETERS"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    INTERNAL_RECIPIENT_ERROR = "INTERNAL_RECIPIENT_ERROR"
    TOO_MANY_RESULTS = "TOO_MANY_RESULTS"


class Rejection(Exception):
    """A request the clearing house refuses; ``reply()`` is the answer to send."""

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def reply(self) -> Reply:
        return "rejection", {"code": self.code.value, "message": self.message}


class CreateProcess(TypedDict):
    pid: str
    owners: list[str]


class LogRequest(TypedDict):
    pid: str
    header: dict[str, Any]
    payload: bytes | None
    payload_sha256: str
    payload_type: str


class QueryRequest(TypedDict):
    """The store selects ``date_from <= timestamp <= date_to`` (None: unbounded), orders by
    ``seq`` in ``sort`` order and returns ``size`` entries from offset ``(page - 1) * size``."""

    pid: str
    page: int
    size: int
    sort: Literal["asc", "desc"]
    date_from: int | None
    date_to: int | None


class GetRequest(TypedDict):
    pid: str
    id: str


class Entry(TypedDict):
    """One link of a process's chain, as stored and as returned by ``query``/``get``."""

    pid: str
    seq: int
    prev_hash: str
    timestamp: int
    client_id: str
    header: dict[str, Any]
    payload_sha256: str
    payload_type: str
    payload: bytes | None
    entry_hash: str


# --- request validation ------------------------------------------------------------------


def _fields(obj: object, action: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Rejection(
            Reason.MALFORMED_MESSAGE,
            f"{action}: the object must be a map, not {type(obj).__name__}",
        )
    missing = required - obj.keys()
    if missing:
        raise Rejection(
            Reason.MALFORMED_MESSAGE, f"{action}: missing field(s) {', '.join(sorted(missing))}"
        )
    unknown = obj.keys() - required - optional
    if unknown:
        raise Rejection(
            Reason.MALFORMED_MESSAGE,
            f"{action}: unknown field(s) {', '.join(sorted(map(str, unknown)))}",
        )
    return obj


def _malformed_type(where: str, expected: str, value: object) -> Rejection:
    return Rejection(
        Reason.MALFORMED_MESSAGE, f"{where}: must be {expected}, not {type(value).__name__}"
    )


def _pid(value: object, action: str) -> str:
    where = f"{action}.pid"
    if not isinstance(value, str):
        raise _malformed_type(where, "text", value)
    if not value:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: must not be empty")
    if value == RESERVED_PID:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {RESERVED_PID!r} is reserved")
    if len(value) > _MAX_PID_LENGTH or not value.isprintable() or " " in value:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"{where}: {value[:40]!r} is not 1 to {_MAX_PID_LENGTH} printable non-space characters",
        )
    return value


def _hex64(value: object, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise _malformed_type(where, "text", value)
    if not _HEX64.fullmatch(value):
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value[:70]!r} is not {what}")
    return value


def parse_create_process(obj: object) -> CreateProcess:
    """Validate ``create_process{pid, owners?}``; owners come back deduplicated and sorted."""
    fields = _fields(obj, "create_process", {"pid"}, {"owners"})
    pid = _pid(fields["pid"], "create_process")
    owners = fields.get("owners")
    if owners is None:
        owners = []
    elif not isinstance(owners, list):
        raise _malformed_type("create_process.owners", "a list of agent ids", owners)
    for index, owner in enumerate(owners):
        if not is_agent_id(owner):
            raise Rejection(
                Reason.BAD_PARAMETERS,
                f"create_process.owners[{index}]: {owner!r} is not an agent id "
                "(43 base64url characters)",
            )
    return {"pid": pid, "owners": sorted(set(owners))}


def parse_log(obj: object, *, max_payload: int) -> LogRequest:
    """Validate ``log``: a canonical header, a well-formed hash that matches the payload when
    one is sent, and a non-empty payload of at most ``max_payload`` bytes."""
    fields = _fields(obj, "log", {"pid", "header", "payload_sha256", "payload_type"}, {"payload"})
    pid = _pid(fields["pid"], "log")
    header = fields["header"]
    if not isinstance(header, dict):
        raise _malformed_type("log.header", "a map", header)
    try:
        canonical(header)
    except CodecError as exc:
        raise Rejection(Reason.BAD_PARAMETERS, f"log.header: {exc}") from exc
    payload_type = fields["payload_type"]
    if not isinstance(payload_type, str):
        raise _malformed_type("log.payload_type", "text", payload_type)
    if not 0 < len(payload_type) <= _MAX_TYPE_LENGTH:
        raise Rejection(
            Reason.BAD_PARAMETERS, f"log.payload_type: must be 1 to {_MAX_TYPE_LENGTH} characters"
        )
    payload_sha256 = _hex64(
        fields["payload_sha256"], "log.payload_sha256", "64 lowercase hex digits (a SHA-256)"
    )
    payload = fields.get("payload")
    if payload is not None:
        if not isinstance(payload, bytes):
            raise _malformed_type("log.payload", "binary", payload)
        if not payload:
            raise Rejection(
                Reason.BAD_PARAMETERS, "log.payload: is empty; omit it to log the hash alone"
            )
        if len(payload) > max_payload:
            raise Rejection(
                Reason.BAD_PARAMETERS,
                f"log.payload: {len(payload)} bytes exceed the limit of {max_payload}; "
                "log the header or the hash alone",
            )
        actual = hashlib.sha256(payload).hexdigest()
        if actual != payload_sha256:
            raise Rejection(
                Reason.BAD_PARAMETERS,
                f"log.payload_sha256: {payload_sha256} does not match the payload's {actual}",
            )
    return {
        "pid": pid,
        "header": header,
        "payload": payload,
        "payload_sha256": payload_sha256,
        "payload_type": payload_type,
    }


def parse_log_batch(obj: object) -> list[object]:
    """Validate ``log_batch{entries}``: 1 to ``MAX_BATCH`` entries, each checked by
    ``parse_log`` on its own so that one bad entry refuses only itself."""
    fields = _fields(obj, "log_batch", {"entries"}, set())
    entries = fields["entries"]
    if not isinstance(entries, list):
        raise _malformed_type("log_batch.entries", "a list of log objects", entries)
    if not 0 < len(entries) <= MAX_BATCH:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"log_batch.entries: {len(entries)} entries, not 1 to {MAX_BATCH}",
        )
    return entries


def _count(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed_type(where, "an integer", value)
    if value < 1:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value} is below 1")
    return value


def _date_ms(value: object, where: str, *, end_of_day: bool) -> int | None:
    """An inclusive bound in ms: integer ms as given, or a UTC day's first (last) ms."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < _INT64_LIMIT:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value} ms is outside 0..2^63-1")
        return value
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value!r}: {exc}") from exc
        start = (day.toordinal() - _EPOCH_ORDINAL) * _DAY_MS
        if start < 0:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value!r} is before 1970-01-01")
        return start + _DAY_MS - 1 if end_of_day else start
    raise Rejection(
        Reason.BAD_PARAMETERS,
        f"{where}: {value!r} is neither integer ms since the epoch nor a YYYY-MM-DD day",
    )


def parse_query(obj: object) -> QueryRequest:
    """Validate ``query`` and fill the defaults: page 1, size 100, newest first, no dates."""
    fields = _fields(obj, "query", {"pid"}, {"page", "size", "sort", "date_from", "date_to"})
    pid = _pid(fields["pid"], "query")
    page = _count(fields.get("page"), "query.page", 1)
    size = _count(fields.get("size"), "query.size", DEFAULT_PAGE_SIZE)
    if size > MAX_PAGE_SIZE:
        raise Rejection(
            Reason.BAD_PARAMETERS, f"query.size: {size} is above the maximum of {MAX_PAGE_SIZE}"
        )
    if (page - 1) * size >= _INT64_LIMIT:
        raise Rejection(Reason.BAD_PARAMETERS, f"query.page: {page} is beyond any result")
    sort = fields.get("sort")
    if sort is None:
        sort = "desc"
    if sort not in ("asc", "desc"):
        raise Rejection(Reason.BAD_PARAMETERS, f"query.sort: {sort!r} is neither 'asc' nor 'desc'")
    date_from = _date_ms(fields.get("date_from"), "query.date_from", end_of_day=False)
    date_to = _date_ms(fields.get("date_to"), "query.date_to", end_of_day=True)
    if date_from is not None and date_to is not None and date_from > date_to:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"query.date_from: {fields['date_from']!r} is after date_to {fields['date_to']!r}",
        )
    return {
        "pid": pid,
        "page": page,
        "size": size,
        "sort": sort,
        "date_from": date_from,
        "date_to": date_to,
    }


def parse_get(obj: object) -> GetRequest:
    """Validate ``get{pid, id}``; a document id is the entry hash."""
    fields = _fields(obj, "get", {"pid", "id"}, set())
    pid = _pid(fields["pid"], "get")
    document_id = _hex64(fields["id"], "get.id", "a document id (64 lowercase hex digits)")
    return {"pid": pid, "id": document_id}


def parse_keys(obj: object) -> None:
    """Validate ``keys{}``: it takes no fields."""
    _fields(obj, "keys", set(), set())


# --- access decisions --------------------------------------------------------------------


def _authenticated(action: str, caller: str) -> None:
    if not is_agent_id(caller):
        raise Rejection(
            Reason.NOT_AUTHENTICATED,
            f"{action}: caller {caller!r} is not an authenticated agent id",
        )


def decide_create(
    request: CreateProcess, caller: str, existing_owners: Collection[str] | None
) -> list[str]:
    """The owners to store for a new process: the requested ones plus the caller.

    A pid that exists already is refused: ``BAD_PARAMETERS`` for one of its owners (a client
    mistake), ``NOT_AUTHORIZED`` for anyone else.
    """
    _authenticated("create_process", caller)
    pid = request["pid"]
    if existing_owners is not None:
        if caller in existing_owners:
            raise Rejection(Reason.BAD_PARAMETERS, f"create_process.pid: {pid!r} exists already")
        raise Rejection(
            Reason.NOT_AUTHORIZED, f"create_process.pid: {pid!r} exists and you do not own it"
        )
    owners = sorted({caller, *request["owners"]})
    if len(owners) > MAX_OWNERS:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"create_process.owners: {len(owners)} owners, you included, exceed {MAX_OWNERS}",
        )
    return owners


def authorize(
    action: Literal["log", "query", "get"],
    pid: str,
    caller: str,
    existing_owners: Collection[str] | None,
) -> list[str] | None:
    """Check that ``caller`` may run ``action`` on ``pid``; only owners read or write.

    Returns the owners of a process to create first (a ``log`` to an unknown pid makes the
    caller its sole owner), else None. Reading an unknown pid is ``NOT_FOUND``.
    """
    _authenticated(action, caller)
    if existing_owners is None:
        if action == "log":
            return [caller]
        raise Rejection(Reason.NOT_FOUND, f"{action}.pid: there is no process {pid!r}")
    if caller not in existing_owners:
        raise Rejection(Reason.NOT_AUTHORIZED, f"{action}.pid: you are not an owner of {pid!r}")
    return None


# --- the per-process hash chain ----------------------------------------------------------


class ChainError(ValueError):
    """The first entry of a chain that does not verify, and why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index
        self.reason = reason


_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "pid": str,
    "seq": int,
    "prev_hash": str,
    "timestamp": int,
    "client_id": str,
    "header": dict,
    "payload_sha256": str,
    "payload_type": str,
    "payload": (bytes, type(None)),
    "entry_hash": str,
}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical map of an entry's ``HASHED_FIELDS``."""
    return digest({name: entry[name] for name in HASHED_FIELDS}).hex()


def next_entry(
    prev: Mapping[str, Any] | None, request: LogRequest, *, client_id: str, now_ms: int
) -> Entry:
    """The entry that appends ``request`` after ``prev`` (None: the process's first entry)."""
    if not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError(f"now_ms must be integer ms since the epoch, got {now_ms!r}")
    if prev is None:
        seq, prev_hash, timestamp = 1, ZERO_HASH, now_ms
    elif prev["pid"] != request["pid"]:
        raise ValueError(
            f"the previous entry is from process {prev['pid']!r}, not {request['pid']!r}"
        )
    else:
        seq, prev_hash = prev["seq"] + 1, prev["entry_hash"]
        timestamp = max(now_ms, prev["timestamp"])
    entry: Entry = {
        "pid": request["pid"],
        "seq": seq,
        "prev_hash": prev_hash,
        "timestamp": timestamp,
        "client_id": client_id,
        "header": request["header"],
        "payload_sha256": request["payload_sha256"],
        "payload_type": request["payload_type"],
        "payload": request["payload"],
        "entry_hash": "",
    }
    entry["entry_hash"] = entry_hash(entry)
    return entry


def _entry_problem(entry: object, prev: Mapping[str, Any] | None) -> str | None:
    if not isinstance(entry, Mapping):
        return f"is a {type(entry).__name__}, not a map"
    missing = sorted(_ENTRY_TYPES.keys() - entry.keys())
    unknown = sorted(map(str, entry.keys() - _ENTRY_TYPES.keys()))
    if missing or unknown:
        return f"fields missing {missing}, unexpected {unknown}"
    for name, kind in _ENTRY_TYPES.items():
        value = entry[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} is a {type(value).__name__}"
    for name in ("prev_hash", "payload_sha256", "entry_hash"):
        if not _HEX64.fullmatch(entry[name]):
            return f"{name} {entry[name][:70]!r} is not 64 lowercase hex digits"
    seq = entry["seq"]
    if prev is None:
        expected_seq, expected_prev = 1, ZERO_HASH
    else:
        if entry["pid"] != prev["pid"]:
            return f"seq {seq}: pid {entry['pid']!r} differs from the chain's {prev['pid']!r}"
        expected_seq, expected_prev = prev["seq"] + 1, prev["entry_hash"]
        if entry["timestamp"] < prev["timestamp"]:
            return f"seq {seq}: timestamp {entry['timestamp']} precedes {prev['timestamp']}"
    if seq != expected_seq:
        return f"seq {seq} where {expected_seq} is due: an entry is missing or out of order"
    if entry["prev_hash"] != expected_prev:
        return f"seq {seq}: prev_hash {entry['prev_hash']} is not the previous hash {expected_prev}"
    payload = entry["payload"]
    if payload is not None and hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
        return f"seq {seq}: the payload does not hash to payload_sha256"
    try:
        recomputed = entry_hash(entry)
    except CodecError as exc:
        return f"seq {seq}: cannot be hashed: {exc}"
    if recomputed != entry["entry_hash"]:
        return f"seq {seq}: entry_hash is not {recomputed}, the hash of the entry's fields"
    return None


def verify_chain(
    entries: Sequence[Mapping[str, Any]], prev: Mapping[str, Any] | None = None
) -> None:
    """Check consecutive entries in ascending ``seq``; raise ``ChainError`` at the first bad one.

    ``prev`` is the trusted entry just before ``entries[0]``; None means the chain must start
    at seq 1, so a full audit needs every page of an ascending query. A withheld payload
    (None) passes: its hash is still bound into the chain.
    """
    for index, entry in enumerate(entries):
        problem = _entry_problem(entry, prev)
        if problem is not None:
            raise ChainError(index, problem)
        prev = entry


# --- replies -----------------------------------------------------------------------------


def processed(receipt: str | None = None) -> Reply:
    """``processed{receipt?}``: the answer to ``create_process`` (no receipt) and ``log``."""
    return "processed", {} if receipt is None else {"receipt": receipt}


def processed_batch(outcomes: Sequence[Entry | Reply], keyring: Keyring) -> Reply:
    """``processed_batch{signed?, results}`` for a ``log_batch``'s ``outcomes`` in order: each
    entry appended (an ``Entry``) or refused (its ``rejection`` reply). The receipts of the
    entries are signed at once; the batch JWS goes once, as ``signed``, and each entry's
    result is ``{entry}``, its receipt being ``signed + "~" + entry``; a refusal's is
    ``{code, message}``."""
    entries = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    signed, parts = keyring.sign(entries) if entries else (None, [])
    next_part = iter(parts).__next__
    results = [{"entry": next_part()} if isinstance(outcome, dict) else outcome[1]
               for outcome in outcomes]
    return "processed_batch", {"results": results} if signed is None else {
        "signed": signed, "results": results}


def query_result(
    request: QueryRequest, entries: Sequence[Entry], total: int, *, max_bytes: int
) -> Reply:
    """One page of a query; ``total`` counts every entry matching the dates.

    A page whose msgpack form exceeds ``max_bytes`` (the frame limit less the envelope) is
    ``TOO_MANY_RESULTS``: the client must ask for fewer entries per page.
    """
    page, size = request["page"], request["size"]
    result = {
        "entries": list(entries),
        "total": total,
        "page": page,
        "size": size,
        "has_more": page * size < total,
    }
    packed = len(pack(result))
    if packed > max_bytes:
        raise Rejection(
            Reason.TOO_MANY_RESULTS,
            f"query.size: page {page} of {size} entries is {packed} bytes, over the "
            f"{max_bytes}-byte reply limit; ask for a smaller size",
        )
    return "result", result


def get_result(request: GetRequest, entry: Entry | None) -> Reply:
    """The answer to ``get``: a one-entry page, or ``NOT_FOUND``."""
    if entry is None:
        raise Rejection(
            Reason.NOT_FOUND, f"get.id: process {request['pid']!r} has no entry {request['id']}"
        )
    return "result", {"entries": [entry], "total": 1, "page": 1, "size": 1, "has_more": False}


# --- receipts ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def thumbprint(public: bytes) -> str:
    """RFC 7638 SHA-256 thumbprint of an Ed25519 public key: the receipt's ``kid``."""
    members = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64u(public)}, separators=(",", ":"), sort_keys=True
    )
    return b64u(hashlib.sha256(members.encode()).digest())


def entry_claims(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The receipt claims that restate ``entry``: pass as ``expect`` to match a receipt to it."""
    return {
        "process_id": entry["pid"],
        "document_id": entry["entry_hash"],
        "seq": entry["seq"],
        "timestamp": entry["timestamp"],
        "client_id": entry["client_id"],
        "payload_sha256": entry["payload_sha256"],
        "entry_hash": entry["entry_hash"],
        "prev_hash": entry["prev_hash"],
    }


def _jwk(public: bytes) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64u(public),
        "kid": thumbprint(public),
        "alg": "EdDSA",
        "use": "sig",
    }


@dataclass(frozen=True)
class Keyring:
    """The receipt-signing key and the retired public keys that old receipts still need.

    ``issuer`` (the ``iss`` claim) is the clearing house's agent id; the signing key is its own
    so that rotating it does not change the node's identity.
    """

    issuer: str
    current: SigningKey
    retired: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if any(len(public) != 32 for public in self.retired):
            raise ValueError("a retired key is a 32-byte Ed25519 public key")

    @property
    def kid(self) -> str:
        return thumbprint(self.current.public)

    def rotated(self, new_key: SigningKey) -> Keyring:
        """Sign with ``new_key`` from now on and keep the current key's public half."""
        return Keyring(self.issuer, new_key, (self.current.public, *self.retired))

    def jwks(self) -> dict[str, Any]:
        """Every public key, current first, as a JWKS: the ``keys`` reply."""
        publics = dict.fromkeys((self.current.public, *self.retired))
        return {"keys": [_jwk(public) for public in publics]}

    def receipts(self, entries: Sequence[Mapping[str, Any]]) -> list[str]:
        """The receipts of stored ``entries`` (at least one), in order, under one signature.

        The JWS signs the batch: ``iss``, ``iat`` (the newest entry's time, in seconds),
        ``version``, and the root of a Merkle tree whose leaves are the entries' claims. Each
        receipt is that JWS, ``~``, and the base64url msgpack map ``{claims, index, proof}``
        of its entry (``claims``: its claims as canonical msgpack, the bytes its leaf hashes;
        ``proof``: its Merkle siblings from the bottom up, 32 bytes each), so it stands alone.
        Deterministic: Ed25519 needs no randomness.
        """
        signed, parts = self.sign(entries)
        return [f"{signed}~{part}" for part in parts]

    def sign(self, entries: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        """The batch JWS over ``entries`` and each one's entry part: see ``receipts``."""
        claims = [_claims_bytes(entry_claims(entry)) for entry in entries]
        levels = merkle.tree([merkle.leaf_hash(one) for one in claims])
        batch = {
            "iss": self.issuer,
            "iat": max(entry["timestamp"] for entry in entries) // 1000,
            "version": RECEIPT_VERSION,
            "batch_root": merkle.root(levels).hex(),
            "batch_size": len(claims),
        }
        signed = jwt.encode(
            batch, self.current.private_key, algorithm="EdDSA", headers={"kid": self.kid}
        )
        return signed, [
            b64u(pack({
                "claims": one, "index": index, "proof": b"".join(merkle.proof(levels, index)),
            }))
            for index, one in enumerate(claims)
        ]


def _claims_bytes(claims: Mapping[str, Any]) -> bytes:
    """An entry's claims as canonical msgpack: a flat map of text and integers, so sorting
    its keys is all that canonical encoding takes."""
    return pack(dict(sorted(claims.items())))


class ReceiptFault(StrEnum):
    """Why a receipt failed, for reports such as ``receipts.verify``."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_CLAIMS = "bad_claims"
    MISMATCH = "mismatch"


class ReceiptError(ValueError):
    """A receipt that does not verify; ``fault`` classifies it, the message says why."""

    def __init__(self, fault: ReceiptFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


_BATCH_TYPES: dict[str, type] = {
    "iss": str,
    "iat": int,
    "version": int,
    "batch_root": str,
    "batch_size": int,
}
_CLAIM_TYPES: dict[str, type] = {
    "process_id": str,
    "document_id": str,
    "seq": int,
    "timestamp": int,
    "client_id": str,
    "payload_sha256": str,
    "entry_hash": str,
    "prev_hash": str,
}
_URL_ALPHABET = bytes.maketrans(b"-_", b"+/")
VERIFIED_BATCHES = 4096  # signed batches whose signature check is remembered
MAX_SIGNED = 2048  # characters of a receipt's JWS: its header and claims are small
MAX_ENTRY_PART = 8192  # characters of its entry part: claims and a proof (at most 64 hashes)


def _jwks_public(jwks: Mapping[str, Any], kid: str) -> bytes:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ReceiptError(ReceiptFault.UNKNOWN_KEY, "the JWKS has no 'keys' list")
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kid") != kid:
            continue
        x = jwk.get("x")
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and isinstance(x, str):
            public = _thumbprinted_key(x, kid)
            if public is not None:
                return public
        raise ReceiptError(
            ReceiptFault.UNKNOWN_KEY, f"JWKS key {kid} is not an Ed25519 key with that thumbprint"
        )
    raise ReceiptError(
        ReceiptFault.UNKNOWN_KEY,
        f"kid {kid} is not among the {len(keys)} JWKS keys: another key signed this receipt",
    )


@functools.lru_cache(maxsize=64)
def _thumbprinted_key(x: str, kid: str) -> bytes | None:
    """The Ed25519 key that JWK member ``x`` holds, if its thumbprint is ``kid``."""
    try:
        public = unb64u(x)
    except IdentityError:
        return None
    return public if len(public) == 32 and thumbprint(public) == kid else None


def _check_types(claims: Mapping[str, Any], types: Mapping[str, type], what: str) -> None:
    if all(type(claims.get(name)) is kind for name, kind in types.items()):
        return
    missing = sorted(types.keys() - claims.keys())
    if missing:
        raise ReceiptError(ReceiptFault.BAD_CLAIMS, f"{what} missing: {', '.join(missing)}")
    for name, kind in types.items():
        value = claims[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReceiptError(
                ReceiptFault.BAD_CLAIMS,
                f"claim {name} is a {type(value).__name__}, not {kind.__name__}",
            )


def _segment(text: str) -> bytes:
    """A strict base64url decode of one segment (no padding, no ``+`` or ``/``); ValueError
    if it is none."""
    data = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    if b"+" in data or b"/" in data or b"=" in data:
        raise ValueError("not base64url: it holds '+', '/' or '='")
    return binascii.a2b_base64(data.translate(_URL_ALPHABET) + b"=" * (-len(data) % 4),
                               strict_mode=True)


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object from a base64url segment (``text``) or decoded ``bytes``."""
    try:
        value = json.loads(_segment(text) if isinstance(text, str) else text)
    except (ValueError, RecursionError) as exc:
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the {what} does not decode: {exc} (truncated or altered)"
        ) from exc
    if not isinstance(value, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, f"the {what} does not decode: not an object")
    return value


@functools.lru_cache(maxsize=64)
def _public_key(public: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public)


@functools.lru_cache(maxsize=VERIFIED_BATCHES)
def _signed_batch(signed: str, public: bytes, kid: str) -> dict[str, Any]:
    """The claims of the batch JWS ``signed`` once its signature verifies (remembered: the
    receipts of one batch share it, so it is checked once)."""
    segments = signed.split(".")
    if len(segments) != 3:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"{len(segments)} dot-separated segments, not 3: truncated or not a compact JWS",
        )
    try:
        signature = _segment(segments[2])
    except ValueError:
        signature = None
    if signature is None or len(signature) != 64 or b64u(signature) != segments[2]:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            "the signature is not 64 base64url-encoded bytes: the receipt is truncated or altered",
        )
    try:
        body = _segment(segments[1])
    except ValueError as exc:
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the signed batch does not decode: {exc}"
        ) from exc
    try:
        _public_key(public).verify(signature, f"{segments[0]}.{segments[1]}".encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError) as exc:
        raise ReceiptError(
            ReceiptFault.BAD_SIGNATURE,
            f"the signature does not verify with key {kid}: the header or a claim was altered",
        ) from exc
    claims = _json_object(body, "signed batch")
    _check_types(claims, _BATCH_TYPES, "signed claims")
    if claims["version"] != RECEIPT_VERSION:
        raise ReceiptError(
            ReceiptFault.BAD_CLAIMS,
            f"receipt version {claims['version']} is not {RECEIPT_VERSION}, the one this reads",
        )
    if not _HEX64.fullmatch(claims["batch_root"]) or claims["batch_size"] < 1:
        raise ReceiptError(ReceiptFault.BAD_CLAIMS, "the signed batch root or size is invalid")
    return claims


def _split(token: object) -> tuple[str, str]:
    if not isinstance(token, str):
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"a receipt is text, not {type(token).__name__}"
        )
    parts = token.split("~")
    if len(parts) == 2 and (len(parts[0]) > MAX_SIGNED or len(parts[1]) > MAX_ENTRY_PART):
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"the receipt's parts are {len(parts[0])} and {len(parts[1])} characters, more"
            f" than a receipt's {MAX_SIGNED} and {MAX_ENTRY_PART}",
        )
    if len(parts) != 2:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"{len(parts)} '~'-separated parts, not 2 (the signed batch and the entry):"
            " truncated or not a receipt",
        )
    return parts[0], parts[1]


def _disclosure(text: str) -> tuple[dict[str, Any], int, bytes, bytes]:
    """The entry part of a receipt: (claims, index, proof: the sibling hashes end to end,
    leaf)."""
    try:
        disclosed = unpack(_segment(text))
    except ValueError as exc:  # CodecError too
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the entry part does not decode: {exc} (truncated or altered)"
        ) from exc
    if not isinstance(disclosed, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part is not a map")
    packed, index, proof = disclosed.get("claims"), disclosed.get("index"), disclosed.get("proof")
    if not isinstance(packed, bytes):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part holds no packed claims")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part holds no integer index")
    if not isinstance(proof, bytes) or len(proof) % 32:
        raise ReceiptError(ReceiptFault.MALFORMED,
                           "the entry part's proof is not a run of 32-byte hashes")
    if len(disclosed) != 3:  # one receipt, one spelling: nothing beside claims, index, proof
        extra = ", ".join(sorted(map(str, disclosed.keys() - {"claims", "index", "proof"})))
        raise ReceiptError(ReceiptFault.MALFORMED,
                           f"the entry part holds {extra} beside claims, index and proof")
    try:
        claims = unpack(packed)
    except CodecError as exc:
        raise ReceiptError(ReceiptFault.MALFORMED, f"the claims do not decode: {exc}") from exc
    if not isinstance(claims, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, "the claims are not a map")
    _check_types(claims, _CLAIM_TYPES, "claims")
    return claims, index, proof, merkle.leaf_hash(packed)


def receipt_claims_unverified(token: object) -> dict[str, Any]:
    """The entry claims a receipt states, without any check: only to file it by seq and
    document. ``{}`` when it does not even decode."""
    try:
        return _disclosure(_split(token)[1])[0]
    except ReceiptError:
        return {}


@functools.lru_cache(maxsize=VERIFIED_BATCHES)
def _kid(signed: str) -> str:
    header = _json_object(signed.split(".", 1)[0], "header")
    if header.get("alg") != "EdDSA":
        raise ReceiptError(ReceiptFault.MALFORMED, f"alg {header.get('alg')!r} is not EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise ReceiptError(ReceiptFault.MALFORMED, "the header names no kid")
    return kid


def verify_receipt(
    token: object, jwks: Mapping[str, Any], expect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The claims of a receipt (``iss, iat, version`` and its entry's) that verifies: its
    batch's EdDSA signature under its ``kid`` in ``jwks``, and its entry's Merkle proof up to
    the signed root.

    ``expect`` maps claim names to required values (e.g. ``entry_claims(entry)`` or
    ``{"process_id": pid}``). Raises ``ReceiptError`` saying why otherwise.
    """
    signed, disclosed = _split(token)
    kid = _kid(signed)
    batch = _signed_batch(signed, _jwks_public(jwks, kid), kid)
    claims, index, proof, leaf = _disclosure(disclosed)
    try:
        reached = merkle.root_from_proof(
            leaf, index, batch["batch_size"], [proof[i:i + 32] for i in range(0, len(proof), 32)]
        )
    except merkle.ProofError as exc:
        raise ReceiptError(ReceiptFault.MALFORMED, f"the entry's proof is invalid: {exc}") \
            from exc
    if reached.hex() != batch["batch_root"]:
        raise ReceiptError(
            ReceiptFault.BAD_SIGNATURE,
            "the entry's claims are not the ones signed (their Merkle proof does not lead to"
            " the signed root): a claim was altered",
        )
    return _stated(batch, claims, expect)


def _stated(
    batch: Mapping[str, Any], claims: Mapping[str, Any], expect: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A verified receipt's claims, once they say what ``expect`` requires."""
    stated = {"iss": batch["iss"], "iat": batch["iat"], "version": batch["version"], **claims}
    for name, wanted in (expect or {}).items():
        if stated.get(name) != wanted:
            raise ReceiptError(
                ReceiptFault.MISMATCH,
                f"the receipt's {name} is {stated.get(name)!r}, expected {wanted!r}",
            )
    return stated


def verify_batch(
    signed: str, parts: Sequence[str], jwks: Mapping[str, Any],
    expects: Sequence[Mapping[str, Any] | None],
) -> list[dict[str, Any] | ReceiptError]:
    """``verify_receipt`` for every receipt ``signed~part`` of one whole batch (as a
    ``processed_batch`` carries it): each one's claims or its ``ReceiptError``, in order.

    The same verdicts, for less work: the signature and key are checked once, and the tree is
    rebuilt from all the leaves (one hash per leaf) instead of walking each proof (one hash
    per level per leaf); each receipt's index and proof must then be the tree's own. Anything
    unexpected falls back to checking each receipt alone.
    """
    try:
        kid = _kid(signed)
        batch = _signed_batch(signed, _jwks_public(jwks, kid), kid)
        opened = [_disclosure(part) for part in parts]
    except ReceiptError:
        opened = []
    if opened and batch["batch_size"] == len(opened):
        levels = merkle.tree([leaf for _, _, _, leaf in opened])
        if merkle.root(levels).hex() == batch["batch_root"] and all(
            index == position and proof == b"".join(merkle.proof(levels, position))
            for position, (_, index, proof, _) in enumerate(opened)
        ):
            return [_verdict(_stated, batch, claims, expect)
                    for (claims, _, _, _), expect in zip(opened, expects, strict=True)]
    return [_verdict(verify_receipt, f"{signed}~{part}", jwks, expect)
            for part, expect in zip(parts, expects, strict=True)]


def _verdict(check: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | ReceiptError:
    try:
        return check(*args)
    except ReceiptError as exc:
        return exc


# --- client side -------------------------------------------------------------------------


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
