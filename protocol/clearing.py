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
- Each process is a hash chain (``protocol.clearing_chain``: ``next_entry`` appends,
  ``verify_chain`` audits), ordered by time as well as by ``seq``.
- ``document_id`` is the entry hash: content-addressed, needs no randomness, and ``get`` on an
  id from another process is simply not found.
- Receipts are signed a batch at a time, one JWS over the Merkle root of a ``log_batch``'s
  entries, each receipt carrying its own inclusion proof: see ``protocol.receipts``.
- A pid that begins with an agent id and ``/`` is in that agent's namespace: only it may
  create it (``namespace_of``), by ``create_process`` or by a first ``log``. DESIGN §6's rules
  let whoever creates a pid first own it; a name another node can learn in advance (a lift's
  evidence, under its referee's namespace) would otherwise be theirs to take.
- Queries sort by ``seq``, newest first by default (as IDS does); dates are inclusive bounds,
  integer ms or ``YYYY-MM-DD`` (UTC days); no silent "last two weeks" window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Literal

from protocol.clearing_fields import (
    DEFAULT_PAGE_SIZE,
    HEX64,
    INT64_LIMIT,
    MAX_BATCH,
    MAX_OWNERS,
    MAX_PAGE_SIZE,
    MAX_TYPE_LENGTH,
    RESERVED_PID,
    CreateProcess,
    Entry,
    GetRequest,
    LogRequest,
    QueryRequest,
    Reason,
    Rejection,
    Reply,
    check_count,
    check_fields,
    check_hex64,
    check_pid,
    date_ms,
    malformed_type,
    shown,
)
from protocol.codec import CodecError, canonical, pack
from protocol.keys import is_agent_id
from protocol.receipts import Keyring

TARGET = "ch"
__all__ = [
    "DEFAULT_PAGE_SIZE", "HEX64", "MAX_BATCH", "MAX_OWNERS", "MAX_PAGE_SIZE", "RESERVED_PID",
    "TARGET", "CreateProcess", "Entry", "GetRequest", "LogRequest", "QueryRequest", "Reason",
    "Rejection", "Reply", "authorize", "check_page_bytes", "decide_create", "get_result",
    "namespace_of",
    "parse_create_process", "parse_get", "parse_keys", "parse_log", "parse_log_batch",
    "parse_query", "processed", "processed_batch", "query_result",
]


# --- requests ----------------------------------------------------------------------------


def parse_create_process(obj: object) -> CreateProcess:
    """Validate ``create_process{pid, owners?}``; owners come back deduplicated and sorted."""
    fields = check_fields(obj, "create_process", {"pid"}, {"owners"})
    pid = check_pid(fields["pid"], "create_process")
    owners = fields.get("owners")
    if owners is None:
        owners = []
    elif not isinstance(owners, list):
        raise malformed_type("create_process.owners", "a list of agent ids", owners)
    for index, owner in enumerate(owners):
        if not is_agent_id(owner):
            raise Rejection(
                Reason.BAD_PARAMETERS,
                f"create_process.owners[{index}]: {shown(owner)} is not an agent id "
                "(43 base64url characters)",
            )
    return {"pid": pid, "owners": sorted(set(owners))}


def parse_log(obj: object, *, max_payload: int) -> LogRequest:
    """Validate ``log``: a canonical header of at most ``max_payload`` bytes, a well-formed
    hash that matches the payload when one is sent, and a non-empty payload of at most
    ``max_payload`` bytes (so any entry fits in the answer to a ``get``)."""
    fields = check_fields(obj, "log", {"pid", "header", "payload_sha256", "payload_type"},
                          {"payload"})
    pid = check_pid(fields["pid"], "log")
    header = fields["header"]
    if not isinstance(header, dict):
        raise malformed_type("log.header", "a map", header)
    try:
        encoded = canonical(header)
    except CodecError as exc:
        raise Rejection(Reason.BAD_PARAMETERS, f"log.header: {exc}") from exc
    if len(encoded) > max_payload:
        raise Rejection(Reason.BAD_PARAMETERS, f"log.header: {len(encoded)} bytes exceed the "
                        f"limit of {max_payload}; put the bulk in the payload")
    payload_type = fields["payload_type"]
    if not isinstance(payload_type, str):
        raise malformed_type("log.payload_type", "text", payload_type)
    if not 0 < len(payload_type) <= MAX_TYPE_LENGTH:
        raise Rejection(
            Reason.BAD_PARAMETERS, f"log.payload_type: must be 1 to {MAX_TYPE_LENGTH} characters"
        )
    payload_sha256 = check_hex64(
        fields["payload_sha256"], "log.payload_sha256", "64 lowercase hex digits (a SHA-256)"
    )
    payload = fields.get("payload")
    if payload is not None:
        if not isinstance(payload, bytes):
            raise malformed_type("log.payload", "binary", payload)
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
    fields = check_fields(obj, "log_batch", {"entries"}, set())
    entries = fields["entries"]
    if not isinstance(entries, list):
        raise malformed_type("log_batch.entries", "a list of log objects", entries)
    if not 0 < len(entries) <= MAX_BATCH:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"log_batch.entries: {len(entries)} entries, not 1 to {MAX_BATCH}",
        )
    return entries


def parse_query(obj: object) -> QueryRequest:
    """Validate ``query`` and fill the defaults: page 1, size 100, newest first, no dates."""
    fields = check_fields(obj, "query", {"pid"}, {"page", "size", "sort", "date_from", "date_to"})
    pid = check_pid(fields["pid"], "query")
    page = check_count(fields.get("page"), "query.page", 1)
    size = check_count(fields.get("size"), "query.size", DEFAULT_PAGE_SIZE)
    if size > MAX_PAGE_SIZE:
        raise Rejection(
            Reason.BAD_PARAMETERS, f"query.size: {size} is above the maximum of {MAX_PAGE_SIZE}"
        )
    if (page - 1) * size >= INT64_LIMIT:
        raise Rejection(Reason.BAD_PARAMETERS, f"query.page: {page} is beyond any result")
    sort = fields.get("sort")
    if sort is None:
        sort = "desc"
    if sort not in ("asc", "desc"):
        raise Rejection(Reason.BAD_PARAMETERS,
                        f"query.sort: {shown(sort)} is neither 'asc' nor 'desc'")
    date_from = date_ms(fields.get("date_from"), "query.date_from", end_of_day=False)
    date_to = date_ms(fields.get("date_to"), "query.date_to", end_of_day=True)
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
    fields = check_fields(obj, "get", {"pid", "id"}, set())
    pid = check_pid(fields["pid"], "get")
    document_id = check_hex64(fields["id"], "get.id", "a document id (64 lowercase hex digits)")
    return {"pid": pid, "id": document_id}


def parse_keys(obj: object) -> None:
    """Validate ``keys{}``: it takes no fields."""
    check_fields(obj, "keys", set(), set())


# --- access decisions --------------------------------------------------------------------


def _authenticated(action: str, caller: str) -> None:
    if not is_agent_id(caller):
        raise Rejection(
            Reason.NOT_AUTHENTICATED,
            f"{action}: caller {caller!r} is not an authenticated agent id",
        )


def namespace_of(pid: str) -> str | None:
    """The agent whose namespace ``pid`` is in, if any: a pid that begins with an agent id and
    ``/`` (``AGENT/...``) is that agent's alone to create. So a name someone else can learn
    before the agent uses it (a lift's uuid, which every hop reads in its promise, under its
    referee's agent id) cannot be taken first by them, as sole owner, to have the agent's own
    create and logs refused."""
    head, slash, _ = pid.partition("/")
    return head if slash and is_agent_id(head) else None


def _may_create(action: str, pid: str, caller: str) -> None:
    """Refuse to create ``pid`` for ``caller`` when it is in another agent's namespace."""
    owner = namespace_of(pid)
    if owner is not None and owner != caller:
        raise Rejection(Reason.NOT_AUTHORIZED, f"{action}.pid: {pid!r} is in the namespace of "
                        f"agent {owner} (a pid that begins with an agent id and '/'): only "
                        "that agent may create it")


def decide_create(
    request: CreateProcess, caller: str, existing_owners: Collection[str] | None
) -> list[str]:
    """The owners to store for a new process: the requested ones plus the caller.

    A pid that exists already is refused: ``BAD_PARAMETERS`` for one of its owners (a client
    mistake), ``NOT_AUTHORIZED`` for anyone else; so is one in another agent's namespace
    (``namespace_of``: ``NOT_AUTHORIZED``).
    """
    _authenticated("create_process", caller)
    pid = request["pid"]
    if existing_owners is not None:
        if caller in existing_owners:
            raise Rejection(Reason.BAD_PARAMETERS, f"create_process.pid: {pid!r} exists already")
        raise Rejection(
            Reason.NOT_AUTHORIZED, f"create_process.pid: {pid!r} exists and you do not own it"
        )
    _may_create("create_process", pid, caller)
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
    caller its sole owner, unless the pid is in another agent's namespace), else None.
    Reading an unknown pid is ``NOT_FOUND``.
    """
    _authenticated(action, caller)
    if existing_owners is None:
        if action == "log":
            _may_create("log", pid, caller)
            return [caller]
        raise Rejection(Reason.NOT_FOUND, f"{action}.pid: there is no process {pid!r}")
    if caller not in existing_owners:
        raise Rejection(Reason.NOT_AUTHORIZED, f"{action}.pid: you are not an owner of {pid!r}")
    return None


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
    check_page_bytes(request, len(pack(result)), max_bytes)
    return "result", result


def check_page_bytes(request: QueryRequest, size_bytes: int, max_bytes: int) -> None:
    """``TOO_MANY_RESULTS`` when a page of ``request`` is ``size_bytes`` long, over
    ``max_bytes`` (the frame limit less the envelope). The house checks the stored headers'
    and payloads' lengths before it reads a page, then the page it built."""
    if size_bytes > max_bytes:
        raise Rejection(
            Reason.TOO_MANY_RESULTS,
            f"query.size: page {request['page']} of {request['size']} entries is "
            f"{size_bytes} bytes, over the {max_bytes}-byte reply limit; ask for a smaller size",
        )


def get_result(request: GetRequest, entry: Entry | None, *, max_bytes: int) -> Reply:
    """The answer to ``get``: a one-entry page, or ``NOT_FOUND``; ``TOO_MANY_RESULTS`` for an
    entry too large to answer with (logged before headers were bounded)."""
    if entry is None:
        raise Rejection(
            Reason.NOT_FOUND, f"get.id: process {request['pid']!r} has no entry {request['id']}"
        )
    result = {"entries": [entry], "total": 1, "page": 1, "size": 1, "has_more": False}
    packed = len(pack(result))
    if packed > max_bytes:
        raise Rejection(Reason.TOO_MANY_RESULTS, f"get.id: entry {request['id']} is {packed} "
                        f"bytes, over the {max_bytes}-byte reply limit")
    return "result", result
