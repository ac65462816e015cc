"""Every refusal has one shape and is answered in one place (agentd.runtime.refusals)."""

from __future__ import annotations

import json

import pytest

from agentd.rpc import NOT_FOUND, REFUSED, RpcServer
from agentd.runtime.context import Reject
from agentd.runtime.refusals import ack_error, rpc_error
from agentd.services.relay.driver import ViewError
from protocol import clearing as ch
from protocol import tally as t
from protocol.errors import Refusal


@pytest.mark.parametrize("refusal", [
    Reject("BAD_TICKET", "no such ticket"),
    t.Refusal("bad_ticket", "no such ticket"),
    ch.Rejection(ch.Reason.NOT_AUTHORIZED, "not an owner"),
    ViewError("NOT_FOUND", "no tally"),
])
def test_each_refusal_is_a_refusal_with_an_upper_case_wire_code(refusal):
    assert isinstance(refusal, Refusal)
    code, message = ack_error(refusal)
    assert code == str(refusal.code).upper() and code.isupper()
    assert message == refusal.message


def test_a_refusal_naming_something_unknown_is_not_found_any_other_refused():
    missing = rpc_error(t.Refusal("unknown_tally", "user a holds no tally x"))
    assert (missing.code, missing.reason, missing.message) == (
        NOT_FOUND, "UNKNOWN_TALLY", "user a holds no tally x")
    refused = rpc_error(ch.Rejection(ch.Reason.NOT_AUTHORIZED, "not an owner"))
    assert (refused.code, refused.reason, refused.message) == (
        REFUSED, "NOT_AUTHORIZED", "NOT_AUTHORIZED: not an owner")


async def test_an_rpc_method_that_refuses_gets_the_mapped_error():
    server = RpcServer(rpc_error)

    async def pay() -> None:
        raise t.Refusal("bad_state", "tally t is closed")

    server.register("chit.pay", pay)
    response = await server.handle_line(b'{"jsonrpc": "2.0", "id": 7, "method": "chit.pay"}')
    assert response == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": REFUSED, "message": "BAD_STATE: tally t is closed",
        "data": {"reason": "BAD_STATE"}}}


async def test_missing_parameters_are_named_all_at_once():
    server = RpcServer(rpc_error)

    async def pay(cuid: str, find: str, units: int, memo: str = "") -> None:
        raise AssertionError("not called without its parameters")

    server.register("lift.pay", pay)
    for params, message in (
            ({}, "lift.pay: missing parameters 'cuid', 'find', 'units' (agentd help lift.pay "
                 "shows what each takes)"),
            ({"cuid": "ann", "find": "x"}, "lift.pay: missing parameter 'units' (agentd help "
                                           "lift.pay shows what each takes)")):
        request = {"jsonrpc": "2.0", "id": 1, "method": "lift.pay", "params": params}
        response = await server.handle_line(json.dumps(request).encode())
        assert response["error"]["message"] == message, params
