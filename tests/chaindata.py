"""Shared test data for the clearing-house protocol tests: agents, a receipt key, chains."""

from __future__ import annotations

from typing import Any

from protocol import clearing as ch
from protocol import receipts as rc
from protocol.clearing_chain import next_entry
from protocol.evidence import log_object
from protocol.keys import SigningKey

ALICE = SigningKey(bytes([1]) * 32).agent_id
BOB = SigningKey(bytes([2]) * 32).agent_id
CAROL = SigningKey(bytes([3]) * 32).agent_id
CH_AGENT = SigningKey(bytes([8]) * 32).agent_id
RECEIPT_KEY = SigningKey(bytes([9]) * 32)
MAX_PAYLOAD = 1024
T0 = 1_700_000_000_000


def log_request(pid: str = "p1", payload: bytes = b"evidence", **kwargs: Any) -> ch.LogRequest:
    return ch.parse_log(log_object(pid, payload, **kwargs), max_payload=MAX_PAYLOAD)


def chain(count: int, pid: str = "p1") -> list[ch.Entry]:
    entries: list[ch.Entry] = []
    for n in range(count):
        prev = entries[-1] if entries else None
        request = log_request(pid, f"payload {n}".encode(), header={"n": n})
        entries.append(next_entry(prev, request, client_id=ALICE, now_ms=T0 + n))
    return entries


def keyring(key: SigningKey = RECEIPT_KEY) -> rc.Keyring:
    return rc.Keyring(issuer=CH_AGENT, current=key)
