"""``users.add``: a user's name is checked as its certificate will be, before the user exists.
A name the certificate refuses (over 200 characters) was taken, and every tally the user then
invited or offered was refused ``BAD_FIELD``, with no way to rename or remove the user."""

from __future__ import annotations

import pytest

from tests.netfixture import network
from tests.test_credit_service import refused, rpc

RULE = ("users.add: name must be at most 200 characters (the user's certificate carries it, "
        "and its tally partners see it), with no line breaks, tabs or other control "
        "characters, not ")


@pytest.mark.parametrize(("name", "shown"), [
    ("N" * 201, "201 characters ('NNNNNNNNNNNNNNNNNNNNNNNN'...)"),
    ("a\nb", "'a\\nb'"),
    ("a\u2028b", "'a\\u2028b'"),
])
async def test_a_name_the_certificate_would_refuse_is_refused_and_adds_nobody(tmp_path, name,
                                                                              shown):
    async with network(tmp_path, n=1) as net:
        node = net.nodes[0]
        error = await refused(node, "users.add", cuid="ann", name=name)
        assert (error.reason, error.message) == ("INVALID_PARAMS", RULE + shown)
        assert await rpc(node, "users.list") == []
        named = "Ann\u200cExample\u00a0(any script), 200 characters at most: " + "x" * 150
        assert len(named) == 200
        await rpc(node, "users.add", cuid="ann", name=named)  # the cuid is still free
        invited = await rpc(node, "tally.invite", cuid="ann")
        assert invited["tally"]
        await rpc(node, "users.add", cuid="bob", name="")  # no name: the cuid
        assert [user["name"] for user in await rpc(node, "users.list")] == [named, "bob"]
