"""Acks, views as carried on the wire, the source's answer and the request state a client
reads (Weaver ``Ack``, ``Meta``, ``View``, ``ViewPayload``, ``RequestState``,
``GetStateMessage``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.relay import AckStatus, Status, parse_status
from protocol.relay_fields import Message, is_int, is_uuid, map_fields, require


@dataclass(frozen=True)
class Ack(Message):
    """Every hop's immediate answer (Weaver ``Ack``); ``message`` explains an ERROR."""

    status: AckStatus
    request_id: str
    message: str = ""

    def __post_init__(self) -> None:
        require(
            "Ack.status",
            is_int(self.status) and self.status in (AckStatus.OK, AckStatus.ERROR),
            "must be 0 (OK) or 1 (ERROR)",
        )
        object.__setattr__(self, "status", AckStatus(self.status))
        require("Ack.request_id", is_uuid(self.request_id), "must be a lowercase UUID")
        require("Ack.message", isinstance(self.message, str), "must be text")

    @classmethod
    def from_map(cls, value: object) -> Ack:
        return cls(**map_fields("Ack", value, ("status", "request_id"), ("message",)))


@dataclass(frozen=True)
class Meta(Message):
    """Unsigned facts about a view (Weaver ``Meta``); ``timestamp`` is integer ms."""

    protocol: str
    timestamp: int
    proof_type: str
    serialization_format: str

    def __post_init__(self) -> None:
        for name in ("protocol", "proof_type", "serialization_format"):
            require(f"View.meta.{name}", isinstance(getattr(self, name), str), "must be text")
        require(
            "View.meta.timestamp",
            is_int(self.timestamp) and self.timestamp >= 0,
            "must be integer ms since the epoch",
        )

    @classmethod
    def from_map(cls, value: object) -> Meta:
        names = ("protocol", "timestamp", "proof_type", "serialization_format")
        return cls(**map_fields("View.meta", value, names))


@dataclass(frozen=True)
class View(Message):
    """A notarized answer (Weaver ``View``): ``data`` is what :func:`verify_view` checks."""

    meta: Meta
    data: bytes

    def __post_init__(self) -> None:
        require("View.meta", isinstance(self.meta, Meta), "must be a Meta")
        require("View.data", isinstance(self.data, bytes), "must be bytes")

    @classmethod
    def from_map(cls, value: object) -> View:
        items = map_fields("View", value, ("meta", "data"))
        return cls(meta=Meta.from_map(items["meta"]), data=items["data"])


def _check_outcome(name: str, view: object, error: object) -> None:
    require(f"{name}.view", view is None or isinstance(view, View), "must be a View")
    require(f"{name}.error", error is None or isinstance(error, str), "must be text")
    require(name, view is None or error is None, "holds a view or an error, not both")


@dataclass(frozen=True)
class ViewPayload(Message):
    """The source's answer to a request (Weaver ``ViewPayload``): a view or an error."""

    request_id: str
    view: View | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        require("ViewPayload.request_id", is_uuid(self.request_id), "must be a lowercase UUID")
        _check_outcome("ViewPayload", self.view, self.error)
        require("ViewPayload", (self.view, self.error) != (None, None), "needs a view or an error")

    def to_map(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_map().items() if v is not None}

    @classmethod
    def from_map(cls, value: object) -> ViewPayload:
        items = map_fields("ViewPayload", value, ("request_id",), ("view", "error"))
        view = items.get("view")
        return cls(
            request_id=items["request_id"],
            view=None if view is None else View.from_map(view),
            error=items.get("error"),
        )


@dataclass(frozen=True)
class RequestState(Message):
    """What a client reads about its request (Weaver ``RequestState``).

    COMPLETED carries the view and ERROR the error; the pending states carry neither, and
    DELETED keeps whatever the cleanup left (possibly nothing).
    """

    request_id: str
    status: Status
    view: View | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        require("RequestState.request_id", is_uuid(self.request_id), "must be a lowercase UUID")
        object.__setattr__(self, "status", parse_status(self.status, "RequestState.status"))
        _check_outcome("RequestState", self.view, self.error)
        if self.status is Status.COMPLETED:
            require("RequestState.view", self.view is not None, "COMPLETED needs the view")
        elif self.status is Status.ERROR:
            require("RequestState.error", self.error is not None, "ERROR needs the error")
        elif self.status is not Status.DELETED:
            require(
                "RequestState",
                (self.view, self.error) == (None, None),
                f"{self.status.name} holds neither a view nor an error",
            )

    def to_map(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_map().items() if v is not None}

    @classmethod
    def from_map(cls, value: object) -> RequestState:
        items = map_fields("RequestState", value, ("request_id", "status"), ("view", "error"))
        view = items.get("view")
        return cls(
            request_id=items["request_id"],
            status=items["status"],
            view=None if view is None else View.from_map(view),
            error=items.get("error"),
        )


@dataclass(frozen=True)
class GetStateMessage(Message):
    """A client's poll for one request (Weaver ``GetStateMessage``)."""

    request_id: str

    def __post_init__(self) -> None:
        require(
            "GetStateMessage.request_id", is_uuid(self.request_id), "must be a lowercase UUID"
        )

    @classmethod
    def from_map(cls, value: object) -> GetStateMessage:
        return cls(**map_fields("GetStateMessage", value, ("request_id",)))
