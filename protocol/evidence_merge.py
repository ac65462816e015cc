"""Evidence of several chits of one tally as one clearing-house entry, sans-IO.

Each chit that becomes good or void is logged when it does, in the transaction that changed
it (``agentd.services.clearing.client``), as one waiting log; the sender sends what gathered
while it lingered. A clearing-house entry costs the node and the clearing house about as much
as a whole batch of them (a request row to write, mark and delete, the house's append, a
receipt to check and store), and on a node busy with lifts a tally takes several chits a
second: logged one entry a chit, that evidence was about an eighth of a lift's CPU over all
nodes. So the waiting logs of one process and kind that :func:`mergeable` accepts go as one
entry (:func:`merged`), in the place of the first of them:

- header ``{kind, ref}`` with ``ref`` the chits' uuids, separated by spaces, in order;
- payload the msgpack array of the chits, in that order (each as canonical as it was alone).

A lone chit's entry is as before: ``ref`` its uuid and the chit as payload. Only logs of the
same process and kind that follow each other in that process go together, so the process's
chain holds its entries in the order they were logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

MERGED_KINDS = frozenset({"chit.good", "chit.void"})
MSGPACK = "application/msgpack"
MAX_MERGED = 256  # chits in one entry


def mergeable(obj: Mapping[str, Any]) -> bool:
    """Whether the ``log`` object is one chit's evidence that can share an entry: a header of
    exactly ``{kind, ref}`` of a merged kind, one uuid as ``ref``, and the chit as payload."""
    header = obj.get("header")
    return (isinstance(header, Mapping) and header.keys() == {"kind", "ref"}
            and header["kind"] in MERGED_KINDS
            and isinstance(header["ref"], str) and " " not in header["ref"]
            and isinstance(obj.get("payload"), bytes) and obj.get("payload_type") == MSGPACK)


def merged(objs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The one ``log`` object for ``objs`` (each :func:`mergeable`, of one pid and kind)."""
    first = objs[0]
    if len(objs) == 1:
        return dict(first)
    payload = msgpack.Packer().pack_array_header(len(objs)) + b"".join(
        obj["payload"] for obj in objs)
    return {
        "pid": first["pid"],
        "header": {"kind": first["header"]["kind"],
                   "ref": " ".join(obj["header"]["ref"] for obj in objs)},
        "payload": payload,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_type": MSGPACK,
    }


def group(logs: Sequence[Mapping[str, Any]], *, room: int) -> list[list[int]]:
    """Which of the waiting ``log`` objects ``logs`` (in the order logged) go together: lists
    of their indexes, in the order the entries go. A log joins the open group of its pid when
    both are :func:`mergeable` of one kind and the group stays within ``MAX_MERGED`` chits
    and ``room`` bytes of payload; any other log of that pid closes it."""
    groups: list[list[int]] = []
    open_groups: dict[str, tuple[int, int]] = {}  # pid -> its group's index, payload bytes
    for index, obj in enumerate(logs):
        pid, size = obj["pid"], len(obj.get("payload") or b"")
        if not mergeable(obj):
            groups.append([index])
            open_groups.pop(pid, None)
            continue
        joins = open_groups.get(pid)
        if joins is not None:
            members = groups[joins[0]]
            if (logs[members[0]]["header"]["kind"] == obj["header"]["kind"]
                    and len(members) < MAX_MERGED and joins[1] + size <= room):
                members.append(index)
                open_groups[pid] = (joins[0], joins[1] + size)
                continue
        groups.append([index])
        open_groups[pid] = (len(groups) - 1, size)
    return groups
