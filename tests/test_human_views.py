"""``-H`` of the users and of relay views: what the tables show, and that a row fits 100
columns (names of usual length) where the JSON keeps every value whole."""

from __future__ import annotations

import re

from agentd.human import render

ALICE = "wKIbDc-V_mRGqnY-o0zYiOBvUq5Iu6orALZXJk9tJzU"
BOB = "ZHL-dKJEj0V-_sc9KZmj7iXgD6dxyx97RrHQGuGUZpc"
TALLY = "cdfd881a-71f8-5139-848e-b616e9171ed1"
RELAYED = ("relay.wait", "relay.state")


def cells(lines: list[str]) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


def view(name: str, payload: dict) -> dict:
    """A relay state as relay.wait answers it, with ``payload`` the view's."""
    return {"request_id": "9d1c", "status": "COMPLETED", "status_code": 3, "view": {
        "address": f"127.0.0.1:7101/local/{name}", "signers": [ALICE], "payload": payload}}


def table_under(text: str, key: str) -> list[list[str]]:
    """The rows of the table under ``key:`` (as deep as it is), header first."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == f"{key}:")
    pad = len(lines[at + 1]) - len(lines[at + 1].lstrip())
    rows = []
    for line in lines[at + 1:]:
        if len(line) - len(line.lstrip()) != pad:
            break
        rows.append(line)
    return cells(rows)


def test_human_users_at_a_full_ipv6_address_fit_100_columns():
    """users.list -H showed each user's CHIP address whole: at a full IPv6 address a row took
    113 columns. The address shows as ``cuid:AGENT…@`` (its node's agent id cut, as
    peers.list cuts it) and the host:port cut as peers.list cuts it; the JSON keeps it."""
    where = "[2001:db8:1234:5678:9abc:def0:1234:5678]:9735"
    rows = [{"cuid": cuid, "name": name, "address": f"{cuid}:{ALICE}@{where}",
             "public": "p" * 43} for cuid, name in (("alice", "Alice Liddell"),
                                                     ("bob-the-builder", "Bob"))]
    lines = render("users.list", rows).splitlines()
    assert max(len(line) for line in lines) <= 100, lines
    assert cells(lines) == [
        ["CUID", "NAME", "ADDRESS"],
        ["alice", "Alice Liddell", "alice:wKIbDc-V…@[2001:db8…1234:5678]:9735"],
        ["bob-the-builder", "Bob", "bob-the-builder:wKIbDc-V…@[2001:db8…1234:5678]:9735"]]
    near = render("users.list", [{**rows[0], "address": f"ann:{ALICE}@127.0.0.1:7101"}])
    assert cells(near.splitlines())[1][2] == "ann:wKIbDc-V…@127.0.0.1:7101"


def test_human_relay_view_of_a_tally_shows_the_holders_chains_and_partners_cut():
    """-H relay.wait on a tally:<uuid> view left each holder's chain out of the holders table
    (a nested object): it shows as tally.list shows it, CHAIN index/confirmed. A holder's
    partner (its agent id alone in the view) showed whole: it is cut as peers.list cuts an
    agent id."""
    holder = {"cuid": "alice", "side": "foil", "state": "open", "partner": BOB,
              "balance": 42, "chain": {"index": 3, "head": "h" * 43, "confirmed": 2}}
    state = view(f"tally:{TALLY}", {"tally": TALLY, "signed": {"uuid": TALLY}, "holders": [
        holder, {**holder, "cuid": "dan", "partner": None, "chain": {"index": 0}}]})
    for method in RELAYED:
        text = render(method, state)
        assert table_under(text, "holders") == [
            ["CUID", "SIDE", "STATE", "PARTNER", "BALANCE", "CHAIN"],
            ["alice", "foil", "open", "ZHL-dKJE…", "42", "3/2"],
            ["dan", "foil", "open", "-", "42", "0/-"]], text


def test_human_relay_view_of_a_tallys_chits_shows_each_chit():
    """-H relay.wait on a tally:<uuid>:chits view showed each chit's hash, index and state
    only: the signed chit (a nested object) was left out, so not even its amount showed. The
    table shows what chit.list shows of a chit, and its block's hash cut short."""
    def chit(uuid: str, by: str, units: int, state: str, index: int | None, memo: str) -> dict:
        return {"chit": {"tally": TALLY, "uuid": uuid, "by": by, "type": "tran",
                         "date": 1_765_040_435_000, "units": units, "ref": None, "memo": memo,
                         "hash": "c" * 43, "sign": "s" * 86, "chain": None},
                "state": state, "index": index,
                "hash": None if index is None else f"{index}" * 43}

    state = view(f"tally:{TALLY}:chits", {"tally": TALLY, "holder": "alice", "chits": [
        chit("0b34937b-4625-4f30-85af-deb11a22efed", "foil", 1250, "A.good", 1, "apples"),
        chit("65600174-1bef-4053-a929-27e29487e9ab", "stock", 300, "L.pend", None, "")]})
    for method in RELAYED:
        text = render(method, state)
        rows = table_under(text, "chits")
        assert rows == [
            ["CHIT", "BY", "TYPE", "UNITS", "STATE", "INDEX", "HASH", "MEMO"],
            ["0b34937b…", "foil", "tran", "1250", "A.good", "1", "111111111111…", "apples"],
            ["65600174…", "stock", "tran", "300", "L.pend", "-", "-"]], text


def test_human_relay_view_of_a_lift_shows_its_chits_by_every_field():
    """A lift:<uuid> view's chits (this node's rows, no signed chit) share their place in
    the view with a tally's chits: they keep every field, their uuid cut as a chit's is."""
    chits = [{"chit": "e0075afe-da20-587c-a7ba-57a65b650676", "tally": TALLY, "cuid": "ann",
              "state": "L.good", "units": 700, "by": "stock"}]
    state = view("lift:4a8aa994-e8c9-41b2-96d9-505e4d18ea8e", {
        "lift": "4a8aa994-e8c9-41b2-96d9-505e4d18ea8e", "record": {"kind": "linear"},
        "state": "good", "decision": None, "equivocation": None, "chits": chits})
    assert table_under(render("relay.wait", state), "chits") == [
        ["CHIT", "TALLY", "CUID", "STATE", "UNITS", "BY"],
        ["e0075afe…", "cdfd881a…", "ann", "L.good", "700", "stock"]]


def test_human_proofs_and_receipts_are_cut_in_key_value_lines():
    """-H relay.wait printed a view's proof whole and -H ch.log its receipt: 1,500 and 1,200
    characters of base64 that filled the screen around what a person reads. They show their
    start and their length; the JSON keeps them whole."""
    proof, receipt = "gqRkYXRh" * 200, "eyJhbGci" * 150
    shown = render("relay.wait", {**view("node:info", {"agent": ALICE}), "proof": proof})
    assert "\nproof: gqRkYXRhgqRkYXRhgqRkYXRh… (1600 characters, whole without -H)\n" in shown
    logged = render("ch.log", {"pid": "deal-1", "seq": 2, "receipt": receipt})
    assert logged.splitlines()[-1] == (
        "receipt: eyJhbGcieyJhbGcieyJhbGci… (1200 characters, whole without -H)")
    assert render("ch.log", {"receipt": "short"}) == "receipt: short\n"


def test_human_chits_fit_100_columns_and_empty_counts_show_a_dash():
    """chit.list -H (and lift.show's chits) showed each chit's uuid whole: with a memo of 30
    characters a row took 105 columns. The uuid is cut as a tally's is. getinfo -H showed
    the counts by code it had none of yet as ``{}``; they show "-", as an empty list does."""
    rows = [{"chit": "0b34937b-4625-4f30-85af-deb11a22efed", "by": "foil", "type": "tran",
             "units": 1_250_000, "state": "L.good", "index": 1204, "hash": "h" * 43,
             "memo": "apples, pears and a crate of 12", "date": 1_765_040_435_000,
             "error": None, "lift": None}]
    lines = render("chit.list", rows).splitlines()
    assert max(len(line) for line in lines) <= 100, lines
    assert cells(lines)[1] == ["0b34937b…", "foil", "tran", "1250000", "L.good", "1204",
                               "apples, pears and a crate of 12"]
    long = [{**rows[0], "memo": "m" * 1000}]  # a memo may be 1,000 characters: cut in a table
    assert max(len(line) for line in render("chit.list", long).splitlines()) <= 100
    assert cells(render("chit.list", long).splitlines())[1][-1] == "m" * 40 + "…"
    info = render("getinfo", {"counters": {"refusals": {}, "peer_refusals": {"OVER_LIMIT": 2}}})
    assert info.splitlines() == ["counters:", "  refusals: -", "  peer_refusals:",
                                 "    OVER_LIMIT: 2"]


def test_human_route_of_eight_users_wraps_to_fit_100_columns():
    """route.find -H showed every hop as ``cuid@AGENT…`` on one line: a route of 7 users or
    more took a row past 100 columns. The path wraps between hops, each further line starting
    ``-> `` under the first, and no hop is left out; a short route keeps one line."""
    names = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
    path = [{"cuid": name, "agent": (ALICE, BOB)[i % 2]} for i, name in enumerate(names)]
    lines = render("route.find", [{"capacity": 1_250_000, "path": path},
                                  {"capacity": 9, "path": path[:2]}]).splitlines()
    assert max(len(line) for line in lines) <= 100, lines
    assert lines == [
        "CAPACITY  PATH",
        "1250000   alice@wKIbDc-V -> bob@ZHL-dKJE -> carol@wKIbDc-V -> dave@ZHL-dKJE",
        "          -> erin@wKIbDc-V -> frank@ZHL-dKJE -> grace@wKIbDc-V -> heidi@ZHL-dKJE",
        "9         alice@wKIbDc-V -> bob@ZHL-dKJE"]


def test_human_control_characters_show_as_escapes_and_a_row_stays_one_line():
    """A memo with a newline (taken from our user, or signed by a partner) printed a chit's
    row over two lines in chit.list -H and a bare line in lift.show -H, and an escape
    sequence in one went to the reader's terminal as it came. Control characters show as
    escapes; the JSON keeps them whole. A route's own wrapping is kept."""
    rows = [{"chit": "0b34937b-4625-4f30-85af-deb11a22efed", "by": "foil", "type": "lift",
             "units": 5, "state": "L.good", "index": 3, "memo": "line1\nline2\x1b[31m\x85"}]
    lines = render("chit.list", rows).splitlines()
    assert len(lines) == 2, lines
    assert cells(lines)[1][-1] == "line1\\nline2\\x1b[31m\\x85"
    shown = render("lift.show", {"lift": "7a", "memo": "rent\r\nmay", "path": [
        {"cuid": "ann\n", "agent": ALICE}, {"cuid": "bob", "agent": BOB}]})
    assert shown.splitlines()[:3] == ["lift: 7a", "memo: rent\\r\\nmay", "path:"]
    assert cells(shown.splitlines()[3:]) == [["CUID", "AGENT"], ["ann\\n", f"{ALICE[:8]}…"],
                                             ["bob", f"{BOB[:8]}…"]]
    view_state = view("node:info", {"agent\x1b]0;x\x07": {"n\r": 1}, "rows": [{"a\nb": 2}]})
    assert "\x1b" not in (text := render("relay.wait", view_state)) and "\x07" not in text
    assert "agent\\x1b]0;x\\x07:" in text and "n\\r: 1" in text and "A\\nB" in text
    # cells a column formats (an address, a pid in an agent's namespace), a separator
    # splitlines() breaks at and a bidirectional override: escaped alike
    rows = [{"pid": f"{ALICE}/x\x1b]0;t\x07", "address": f"c:{ALICE}@h\x1b[2J:1",
             "memo": "p\u2028q\u202eevil"}]
    text = render("relay.state", {"view": {"payload": {"rows": rows}}})
    assert not any(char in text for char in "\x1b\x07\u2028\u202e"), text
    assert "p\\u2028q\\u202eevil" in text and len(text.splitlines()) == 5
    route = render("route.find", [{"capacity": 9, "path": [
        {"cuid": f"u{i}\t", "agent": ALICE} for i in range(8)]}]).splitlines()
    assert len(route) > 2 and "\t" not in "".join(route) and "u7\\t@" in route[-1]


def test_human_log_many_shows_a_refused_entry_with_its_error_first_or_not():
    """-H ch.log_many whose first entry was refused was a traceback (the table took its
    columns from the first row, all of it nested), after the other entries were logged: run
    again, it logged them twice. Refused later, its row showed nothing but "-"."""
    refused = {"error": {"code": "NOT_AUTHORIZED", "message": "not an owner of x"}}
    logged = {"pid": "deal-1", "seq": 3, "document_id": "ab" * 32, "receipt": "eyJ..."}
    for rows in ([refused, logged], [logged, refused]):
        lines = [re.split(r"\s{2,}", line.strip())
                 for line in render("ch.log_many", rows).splitlines()]
        assert lines[0] == ["PID", "SEQ", "DOCUMENT_ID", "ERROR"]
        assert ["-", "-", "-", "NOT_AUTHORIZED: not an owner of x"] in lines[1:]
        assert ["deal-1", "3", "abababababab…", "-"] in lines[1:]
    # a list of any other method: every row's plain fields, and nested-only rows as lines
    assert render("any.list", [{"a": 1}, {"b": 2}]).splitlines()[0].split() == ["A", "B"]
    assert render("any.list", [{"a": {"b": 1}}]) == "a:\n  b: 1\n"
