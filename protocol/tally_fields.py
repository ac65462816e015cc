"""The tally map, user certificates and invitation tickets: their fields and checks (sans-IO).

Every check refuses with ``Refusal("bad_field", …)`` naming the first bad field (a ticket's
token or expiry: ``bad_ticket``, ``expired``), so a user or a peer learns what is wrong and
where. :mod:`protocol.tally` negotiates tallies out of these parts; :mod:`protocol.chit_fields`,
:mod:`protocol.lift` and the route modules share the amount and uuid rules.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime
from typing import Any

from .codec import CodecError, canonical, unpack
from .errors import Refusal  # tally refusals use lower-case codes
from .keys import ChipAddress, IdentityError, b64u, unb64u

STOCK = "stock"
FOIL = "foil"
SIDES = (STOCK, FOIL)

MAX_UNITS = 10**15  # milliCHIPs: a trillion CHIPs, far inside 64 bits even when summed
MAX_MEMO = 1000  # characters: keeps every chit and tally well inside one frame

_TALLY_FIELDS = {"version", "uuid", "date", "memo", "agree", "stock", "foil", "sign"}
# str(uuid.UUID(text)) == text, written as a pattern: it is checked on every chit received
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TICKET_FIELDS = {"token", "chad", "expires", "reuse"}


# -- validation helpers -----------------------------------------------------------------------


def exact_fields(value: Any, where: str, names: set[str]) -> None:
    if not isinstance(value, dict) or set(value) != names:
        raise Refusal("bad_field", f"{where} must be a map with exactly the fields {sorted(names)}")


def check_integer(value: Any, where: str, low: int = 0, high: int = 2**63 - 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refusal("bad_field", f"{where} must be an integer in [{low}, {high}]")


def check_text(value: Any, where: str, longest: int = MAX_MEMO) -> None:
    if not isinstance(value, str) or len(value) > longest:
        raise Refusal("bad_field", f"{where} must be text of at most {longest} characters")


def _bytes_or_none(value: Any, where: str, size: int) -> None:
    if value is not None and (not isinstance(value, bytes) or len(value) != size):
        raise Refusal("bad_field", f"{where} must be {size} bytes or nil")


def check_uuid(value: Any, where: str) -> None:
    """A uuid in its canonical lower-case text form (so equal uuids compare equal)."""
    if not isinstance(value, str) or _CANONICAL_UUID.fullmatch(value) is None:
        raise Refusal("bad_field", f"{where} must be a canonical uuid string")


def _check_canonical(value: Any, where: str) -> None:
    try:
        canonical(value)
    except CodecError as exc:
        raise Refusal("bad_field", f"{where}: {exc}") from exc


# -- certificates -----------------------------------------------------------------------------


def make_cert(address: ChipAddress, name: str, public: bytes, date_ms: int) -> dict[str, Any]:
    """A user's certificate: where the user lives and the Ed25519 key that signs for it."""
    cert = {"chad": address.to_map(), "name": name, "public": public, "date": date_ms}
    check_cert(cert, "cert")
    return cert


MAX_CERT_NAME = 200  # characters of a user's name in its certificate


def check_cert(cert: Any, where: str) -> None:
    exact_fields(cert, where, {"chad", "name", "public", "date"})
    try:
        address = ChipAddress.from_map(cert["chad"])
    except IdentityError as exc:
        raise Refusal("bad_field", f"{where}.chad: {exc}") from exc
    if address.cuid is None:
        raise Refusal("bad_field", f"{where}.chad must name a user (cuid)")
    check_text(cert["name"], f"{where}.name", MAX_CERT_NAME)
    if not isinstance(cert["public"], bytes) or len(cert["public"]) != 32:
        raise Refusal("bad_field", f"{where}.public must be a 32-byte Ed25519 public key")
    check_integer(cert["date"], f"{where}.date")


def same_user(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a["chad"].get(field) == b["chad"].get(field) for field in ("cuid", "agent"))


# -- the tally map ----------------------------------------------------------------------------


def check_tally(tally: Any) -> None:
    """Refuse a tally map that is malformed, naming the first bad field."""
    exact_fields(tally, "tally", _TALLY_FIELDS)
    check_integer(tally["version"], "tally.version", 1)
    check_uuid(tally["uuid"], "tally.uuid")
    check_integer(tally["date"], "tally.date")
    check_text(tally["memo"], "tally.memo")
    exact_fields(tally["agree"], "tally.agree", {"name", "version"})
    check_text(tally["agree"]["name"], "tally.agree.name", 200)
    check_integer(tally["agree"]["version"], "tally.agree.version", 1)
    for side in SIDES:
        half = tally[side]
        exact_fields(half, f"tally.{side}", {"cert", "terms"})
        if half["cert"] is not None:
            check_cert(half["cert"], f"tally.{side}.cert")
        terms = half["terms"]
        if not isinstance(terms, dict) or "limit" not in terms:
            raise Refusal("bad_field", f"tally.{side}.terms must be a map with a limit")
        check_integer(terms["limit"], f"tally.{side}.terms.limit", 0, MAX_UNITS)
    exact_fields(tally["sign"], "tally.sign", {"hash", *SIDES})
    _bytes_or_none(tally["sign"]["hash"], "tally.sign.hash", 32)
    for side in SIDES:
        _bytes_or_none(tally["sign"][side], f"tally.sign.{side}", 64)
    _check_canonical(tally, "tally")


# -- invitation tickets -----------------------------------------------------------------------


def make_ticket(
    chad: ChipAddress, token: str, expires_ms: int, *, reuse: bool = False
) -> dict[str, Any]:
    """An invitation to ask for a tally: where to ask, a secret token, an expiry (ms), and
    whether the token may be used more than once (each use gets its own tally)."""
    ticket = {"token": token, "chad": chad.to_map(), "expires": expires_ms, "reuse": reuse}
    _check_ticket_fields(ticket)
    return ticket


def _check_ticket_fields(ticket: Any) -> None:
    exact_fields(ticket, "ticket", _TICKET_FIELDS)
    check_text(ticket["token"], "ticket.token", 200)
    if not ticket["token"]:
        raise Refusal("bad_field", "ticket.token must not be empty")
    try:
        ChipAddress.from_map(ticket["chad"])
    except IdentityError as exc:
        raise Refusal("bad_field", f"ticket.chad: {exc}") from exc
    check_integer(ticket["expires"], "ticket.expires")
    if not isinstance(ticket["reuse"], bool):
        raise Refusal("bad_field", "ticket.reuse must be true or false")


def check_ticket(ticket: dict[str, Any], token: Any, now_ms: int) -> None:
    """Refuse a presented token that is not this ticket's, or a ticket past its expiry."""
    presented = token.encode() if isinstance(token, str) else b""
    if not hmac.compare_digest(presented, ticket["token"].encode()):
        raise Refusal("bad_ticket", "the ticket token is not valid")
    check_unexpired(ticket, now_ms)


def check_unexpired(ticket: dict[str, Any], now_ms: int) -> None:
    """Refuse a ticket past its expiry, saying when that was (UTC)."""
    if now_ms >= ticket["expires"]:
        when = datetime.fromtimestamp(ticket["expires"] / 1000, tz=UTC)
        raise Refusal("expired", f"the ticket expired at {when:%Y-%m-%d %H:%M:%S} UTC "
                      "(ask the inviter for a new one)")


def encode_ticket(ticket: dict[str, Any]) -> str:
    """One copyable string for the out-of-band invitation."""
    return b64u(canonical(ticket))


def decode_ticket(text: str) -> dict[str, Any]:
    half = len(text) // 2
    if text and text[:half] * 2 == text:
        raise Refusal("bad_ticket", "not a ticket: it is one ticket twice over (pasted twice?)")
    try:
        raw = unb64u(text)
    except IdentityError as exc:
        raise Refusal("bad_ticket", f"not a ticket: {exc} (a ticket is letters, digits, '-' "
                      f"and '_' only: {_COPY})") from exc
    try:
        ticket = unpack(raw, max_size=4096)
    except CodecError as exc:
        raise Refusal("bad_ticket", f"not a ticket: {_garbled(raw, exc)}") from exc
    _check_ticket_fields(ticket)
    return ticket


_COPY = "copy the whole string tally.invite printed"


def _garbled(raw: bytes, exc: CodecError) -> str:
    """What is wrong with a string given as a ticket, said as what went wrong in copying it
    (not msgpack's words for it)."""
    why = str(exc)
    if raw[:1] != b"\x84":  # every ticket is a map of 4 fields: it begins 'hK'
        return f"it does not begin as a ticket does ('hK'): {_COPY}"
    if "extra data" in why:
        return ("it goes on past the ticket's end: something was added after it (copy the "
                "string tally.invite printed, and only that)")
    if "incomplete" in why or "truncated" in why or "exceeds max_" in why:
        return f"it ends too soon ({_COPY})"
    return f"it is damaged ({why}): {_COPY}"
