"""End to end: a relay view between two `agentd run` processes, driven through the CLI."""

from __future__ import annotations

import json
import signal

from tests.clihelpers import add_peer, cli, init, start


def test_relay_query_wait_state_delete_through_the_cli(tmp_path):
    a, b = init(tmp_path, "a"), init(tmp_path, "b")
    add_peer(a["config"], "b", b)
    add_peer(b["config"], "a", a)
    with open(b["config"], "a") as handle:
        handle.write(f'\n[[relay.access]]\nprincipal = "{a["agent"]}"\nresource = "user:*"\n')
    processes = [start(a["config"]), start(b["config"])]
    try:
        cli("-c", b["config"], "users.add", "cuid=bob")
        address = f"127.0.0.1:{b['port']}/agentd/user:bob:balance"
        started = json.loads(cli("-c", a["config"], "relay.query", f"address={address}",
                                 "confidential=true").stdout)
        request_id = started["request_id"]
        done = json.loads(cli("-c", a["config"], "relay.wait", f"request_id={request_id}",
                              "timeout_s=10").stdout)
        assert done["status"] == "COMPLETED", done
        assert done["view"]["payload"] == {"cuid": "bob", "balance": 0, "tallies": 0}
        assert done["view"]["signers"] == [b["agent"]] and done["view"]["confidential"]
        state = cli("-c", a["config"], "relay.state", f"request_id={request_id}").stdout
        assert json.loads(state) == done

        bad = cli("-c", a["config"], "relay.query", "address=127.0.0.1:1/agentd", check=False)
        assert bad.returncode == 1
        error = json.loads(bad.stderr)
        assert error["code"] == -32602 and "RELAY/NETWORK/VIEW" in error["message"]

        deleted = json.loads(cli("-c", a["config"], "relay.delete",
                                 f"request_id={request_id}").stdout)
        assert deleted == {"request_id": request_id, "status": "DELETED", "status_code": 7}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=10) == 0
