"""protocol.evidence: what the clearing-house client makes of every answer, above all the
forged and malformed ones (a clearing house that lies, or a message that is garbage)."""

from __future__ import annotations

import pytest

from protocol import clearing as ch
from protocol import evidence as ev
from protocol import receipts as rc
from protocol.keys import SigningKey
from tests.chaindata import ALICE, BOB, CH_AGENT, chain, keyring


def expect(entry: ch.Entry, client: str = ALICE) -> dict:
    return ev.expected_claims(CH_AGENT, entry["pid"], client, entry["payload_sha256"])


# -- what an answer means ---------------------------------------------------------------------


@pytest.mark.parametrize(("request_action", "answer"), [
    ("create_process", "processed"), ("log", "processed"), ("log_batch", "processed_batch"),
    ("query", "result"), ("get", "result"), ("keys", "result"),
])
def test_the_expected_reply_is_applied(request_action, answer):
    assert ev.judge(request_action, answer, {}) is None


def test_a_rejection_is_the_clearing_houses_refusal():
    refused = ev.judge("log", "rejection", {"code": "NOT_AUTHORIZED", "message": "not yours"})
    assert refused == ev.Refused("NOT_AUTHORIZED", "not yours")


def test_a_refusal_of_evidence_says_what_not_authorized_means():
    """NOT_AUTHORIZED on our evidence: another agent holds the process; in our own namespace
    only a clearing house without the namespace rule let it. Other codes are as they came."""
    other = ev.Refused("BAD_PARAMETERS", "log.payload: too large")
    assert ev.refusal_text(other, f"{ALICE}/t1", ALICE) == "BAD_PARAMETERS: log.payload: too large"
    taken = ev.Refused("NOT_AUTHORIZED", "log.pid: you are not an owner of 't1'")
    assert ev.refusal_text(taken, "t1", ALICE) == (
        "NOT_AUTHORIZED: log.pid: you are not an owner of 't1' (another agent created the "
        "process 't1' first, without this node as an owner: nothing this node logs under it "
        "is taken)")
    ours = ev.refusal_text(taken, f"{ALICE}/t1", ALICE)
    assert ours.endswith("is taken; the pid is in this node's namespace, which a clearing house"
                         " that keeps agent namespaces lets nobody else create: this one does "
                         "not, upgrade it)")
    assert "this node's namespace" not in ev.refusal_text(taken, f"{BOB}/t1", ALICE)


def test_a_tally_is_logged_in_the_loggers_namespace():
    pid = ev.tally_pid(ALICE, "0c620f89-8a06-5adb-bea5-4462dde7f86e")
    assert pid == f"{ALICE}/0c620f89-8a06-5adb-bea5-4462dde7f86e"
    assert ch.namespace_of(pid) == ALICE


@pytest.mark.parametrize("obj", [{}, {"code": 7, "message": "x"}, {"code": "X", "message": b"y"}])
def test_a_rejection_without_a_text_code_and_message_is_malformed(obj):
    refused = ev.judge("log", "rejection", obj)
    assert refused.code == "MALFORMED_MESSAGE" and "rejection is malformed" in refused.message


@pytest.mark.parametrize(("request_action", "answer"), [
    ("log", "result"), ("log", "processed_batch"), ("query", "processed"),
    ("log_batch", "processed"), ("create_process", "gossip"),
])
def test_an_answer_of_the_wrong_kind_refuses_the_request(request_action, answer):
    refused = ev.judge(request_action, answer, {"receipt": "anything"})
    assert refused == ev.Refused(
        "MALFORMED_MESSAGE", f"the clearing house answered {request_action} with {answer}")


# -- batches ----------------------------------------------------------------------------------


def test_a_batch_answer_gives_each_entry_its_receipt_or_its_refusal():
    entries = chain(2)
    _, obj = ch.processed_batch(
        [entries[0], ("rejection", {"code": "NOT_AUTHORIZED", "message": "no"}), entries[1]],
        keyring())
    signed, results = ev.batch_results(obj, 3)
    assert isinstance(signed, str)
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert results[1] == ev.Refused("NOT_AUTHORIZED", "no")
    verdicts = ev.batch_verdicts(signed, [results[0], results[2]], keyring().jwks(),
                                 [expect(entries[0]), expect(entries[1])])
    assert [v["seq"] for v in verdicts] == [1, 2]


@pytest.mark.parametrize(("obj", "problem"), [
    ({}, "does not hold 2 result maps"),
    ({"results": "nope"}, "does not hold 2 result maps"),
    ({"results": [{"entry": "a"}]}, "does not hold 2 result maps"),  # one short
    ({"results": [{"entry": "a"}, {"entry": "b"}, {}]}, "does not hold 2 result maps"),
    ({"results": [{"entry": "a"}, "b"]}, "does not hold 2 result maps"),
    ({"results": [{"entry": "a"}, {"entry": "b"}]}, "no signed batch"),  # receipts, no JWS
    ({"signed": 5, "results": [{"entry": "a"}, {"entry": "b"}]}, "no signed batch"),
    ({"signed": "jws", "results": [{"entry": b"a"}, {"entry": "b"}]}, "no signed batch"),
])
def test_a_malformed_batch_answer_applies_nothing(obj, problem):
    with pytest.raises(ev.MalformedAnswer, match=problem):
        ev.batch_results(obj, 2)


def test_a_refused_entry_of_a_batch_that_is_malformed_says_so():
    _, results = ev.batch_results({"results": [{"code": None}]}, 1)
    assert results[0].code == "MALFORMED_MESSAGE"


def test_a_forged_batch_signature_fails_every_receipt_in_it():
    entries = chain(2)
    _, obj = ch.processed_batch(entries, keyring(SigningKey.generate()))  # not the house's key
    signed, results = ev.batch_results(obj, 2)
    verdicts = ev.batch_verdicts(signed, results, keyring().jwks(),
                                 [expect(entry) for entry in entries])
    assert all(isinstance(v, rc.ReceiptError) for v in verdicts)
    statuses = [ev.receipt_status(v, refresh=False)[0] for v in verdicts]
    assert statuses == ["invalid", "invalid"]


def test_without_a_stored_jwks_batch_receipts_wait_unchecked():
    entries = chain(1)
    _, obj = ch.processed_batch(entries, keyring())
    signed, results = ev.batch_results(obj, 1)
    assert ev.batch_verdicts(signed, results, None, [expect(entries[0])]) == [None]


# -- when a receipt is refused ----------------------------------------------------------------


def test_a_valid_receipt_answers_the_caller_with_its_claims():
    entry = chain(1)[0]
    token = keyring().receipts([entry])[0]
    status, problem, claims = ev.receipt_status(
        ev.verdict(token, keyring().jwks(), expect(entry)), refresh=True)
    assert (status, problem) == ("valid", None)
    answer = ev.receipt_answer(token, claims, problem)
    assert answer == {"pid": "p1", "seq": 1, "document_id": entry["entry_hash"],
                      "receipt": token}


def test_a_receipt_signed_by_another_key_is_invalid_and_refused():
    entry = chain(1)[0]
    forged = keyring(SigningKey.generate()).receipts([entry])[0]
    jwks = keyring().jwks()
    # A key the stored JWKS lacks may be a new one: on arrival, fetch the keys first...
    verdict = ev.verdict(forged, jwks, expect(entry))
    assert ev.receipt_status(verdict, refresh=True) == ("unchecked", None, None)
    # ...and once they are fetched and still lack it, the receipt is invalid.
    status, problem, claims = ev.receipt_status(verdict, refresh=False)
    assert status == "invalid" and problem.startswith("unknown_key")
    refused = ev.receipt_answer(forged, claims, problem)
    assert refused.code == "RECEIPT_INVALID" and "unknown_key" in refused.message


def test_a_receipt_for_something_we_did_not_log_is_invalid():
    entry = chain(1)[0]
    token = keyring().receipts([entry])[0]
    for wrong in (expect(entry, client=BOB),
                  {**expect(entry), "payload_sha256": "0" * 64},
                  {**expect(entry), "process_id": "another"}):
        status, problem, _ = ev.receipt_status(ev.verdict(token, keyring().jwks(), wrong),
                                               refresh=True)
        assert status == "invalid" and problem.startswith("mismatch"), problem


@pytest.mark.parametrize("token", ["", "not.a.jws", 42, None])
def test_a_receipt_that_is_not_a_jws_is_invalid(token):
    verdict = ev.verdict(token, keyring().jwks(), {"iss": CH_AGENT})
    assert ev.receipt_status(verdict, refresh=True)[0] == "invalid"


def test_no_stored_jwks_leaves_a_receipt_unchecked():
    assert ev.receipt_status(ev.verdict("x", None, {}), refresh=True) == (
        "unchecked", None, None)


# -- keys and what to log -------------------------------------------------------------------


def test_a_fresh_jwks_adds_to_the_stored_keys_and_a_keyless_one_is_ignored():
    old, new = keyring().jwks(), keyring(SigningKey.generate()).jwks()
    merged = ev.merge_jwks(old, new["keys"])
    assert len(merged["keys"]) == 2
    assert ev.merge_jwks(merged, old["keys"]) == merged  # known keys are not doubled
    assert ev.merge_jwks(old, None) is None and ev.merge_jwks(old, "keys") is None
    assert ev.merge_jwks(None, [42, *old["keys"]]) == old  # junk in the list is dropped


def test_a_houses_jwks_adds_only_well_formed_keys_and_a_bounded_number_of_them():
    """A clearing house's answer cannot make us store, or trip over, what is not an Ed25519
    key named by its thumbprint, nor more than MAX_JWKS_KEYS keys (the ones kept first)."""
    old = keyring().jwks()
    [good] = old["keys"]
    odd = [{**good, "kid": [good["kid"]]}, {**good, "x": 7}, {**good, "kid": "x" * 43},
           {**good, "crv": "X25519"}, {"kid": good["kid"]}, {**good, "x": "A" * 5000}]
    assert ev.merge_jwks(None, odd) == {"keys": []}
    assert ev.merge_jwks(None, [{**good, "note": "x" * 10_000}]) == old  # extra members go
    many = [jwk for _ in range(ev.MAX_JWKS_KEYS + 10)
            for jwk in keyring(SigningKey.generate()).jwks()["keys"]]
    merged = ev.merge_jwks(old, many)
    assert len(merged["keys"]) == ev.MAX_JWKS_KEYS and merged["keys"][0] == good


def test_evidence_names_its_kind_and_ref_and_a_large_payload_goes_by_hash():
    owners, obj, by_hash = ev.evidence_object(
        "t1", [BOB, ALICE, BOB], "chit.good", {"n": 1}, ref="c1", header=None,
        payload_type=None, mode="full", max_payload=1024)
    assert owners == sorted({ALICE, BOB}) and not by_hash
    assert obj["header"]["kind"] == "chit.good" and obj["header"]["ref"] == "c1"
    _, big, by_hash = ev.evidence_object("t1", [ALICE], "tally.open", "x" * 2000, ref=None,
                                         header=None, payload_type=None, mode="full",
                                         max_payload=1024)
    assert by_hash and "payload" not in big and big["header"]["ref"] == "t1"


@pytest.mark.parametrize(("pid", "owners"), [("", [ALICE]), ("p", ["not-an-agent"])])
def test_bad_evidence_is_the_callers_mistake(pid, owners):
    with pytest.raises(ValueError, match="evidence"):
        ev.evidence_object(pid, owners, "k", b"x", ref=None, header=None, payload_type=None,
                           mode="full", max_payload=1024)


def test_batch_entry_keys_are_distinct_and_ordered():
    keys = [ev.entry_key(b"m" * 16, index) for index in range(3)]
    assert keys == sorted(keys) and len(set(keys)) == 3 and keys[0][:16] == b"m" * 16
