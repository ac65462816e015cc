"""Reading a node's config file: every mistake in it named at once, with the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd import cli
from agentd.config import LIMIT_RANGES, address_key, load_config, parse_config
from agentd.errors import UserError
from agentd.init import init_node
from agentd.runtime.node import Node
from agentd.runtime.reload import reload_config
from agentd.up import up
from protocol.keys import SigningKey

BOB = SigningKey(bytes([2]) * 32).agent_id
CAROL = SigningKey(bytes([3]) * 32).agent_id
GOOD = """[node]
name = "alice"
data_dir = "data"
listen = "127.0.0.1:7901"
"""


def complaints(tmp_path, text: str) -> list[str]:
    path = tmp_path / "alice.toml"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        load_config(path)
    lines = str(refused.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    return [line.removeprefix(f"{path}: ") for line in lines]


NAME_RULE = ("must be 1 to 64 printable characters (no line breaks, tabs or other control "
             "characters)")


@pytest.mark.parametrize("name, shown", [
    ("n" * 300, "300 characters ('nnnnnnnnnnnnnnnnnnnnnnnn'...)"),
    ("a" * 65, "65 characters ('aaaaaaaaaaaaaaaaaaaaaaaa'...)"),
    ("alice\nbob", "'alice\\nbob'"),
    ("alice\tbob", "'alice\\tbob'"),
    ("alice\x1b[31m", "'alice\\x1b[31m'"),
    ("alice\u2028bob", "'alice\\u2028bob'"),
])
def test_a_node_name_that_is_not_one_short_line_is_refused_alike_everywhere(
        tmp_path, capsys, name, shown):
    """[node] name took any non-empty text: 300 characters, or line breaks that split a text
    log line in two and broke -H tables. run, up, reload and init --name now refuse it alike:
    the rule, the name as typed (escaped, cut short) and, from a file, the key and the file."""
    complaint = f"{NAME_RULE}, not {shown}"
    path = tmp_path / "alice.toml"
    good = tomlkit.parse(GOOD)
    node = Node(load_config(_written(path, good)), SigningKey.generate())
    good["node"]["name"] = name
    _written(path, good)
    line = f"{path}: node.name {complaint}"
    assert cli.main(["run", "-c", str(path)]) == 2
    assert capsys.readouterr().err == f"agentd: {line}\n"
    with pytest.raises(UserError) as by_up:
        up(path)
    assert str(by_up.value) == line
    with pytest.raises(UserError) as by_reload:
        reload_config(node)
    assert str(by_reload.value) == line and node.config.name == "alice"
    with pytest.raises(UserError) as by_init:
        init_node(tmp_path / "n", name, "127.0.0.1:7301", "agentd")
    assert str(by_init.value) == f"--name {complaint}"
    assert not (tmp_path / "n").exists()


def test_names_of_up_to_64_printable_characters_are_taken(tmp_path):
    """Spaces, accents and punctuation are printable: only length and control characters
    are refused."""
    for name in ("alice", "n0", "clearinghouse", "Zoë's node #2", "x" * 64):
        path = tmp_path / "alice.toml"
        document = tomlkit.parse(GOOD)
        document["node"]["name"] = name
        assert load_config(_written(path, document)).name == name


def _written(path: Path, document: tomlkit.TOMLDocument) -> Path:
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return path


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    """A config saved as Latin-1, or a database given for one, was a UnicodeDecodeError
    traceback from agentd run, up and every method call."""
    latin = tmp_path / "agentd.toml"
    latin.write_bytes(b'[node]\nname = "\xe9"\n')
    said = rf"^{latin}: not a config file: not UTF-8 text \(byte 0xe9 at offset 15; TOML files"
    with pytest.raises(UserError, match=said):
        load_config(latin)
    with pytest.raises(UserError, match=said):
        cli._main(["run", "-c", str(latin)])


def test_a_good_config_loads(tmp_path):
    path = tmp_path / "alice.toml"
    path.write_text(GOOD + "\n[lift]\nauto_clear = true\n")
    config = load_config(path)
    assert (config.name, config.listen, config.lift.auto_clear) == ("alice", "127.0.0.1:7901",
                                                                    True)


def test_every_problem_is_named_at_once_with_what_was_probably_meant(tmp_path):
    text = GOOD.replace("listen =", "lisen =") + (
        "max_channels = 0\n\n[lift]\nlife_s = 0\nauto_clar = true\n\n[node2]\n")
    found = complaints(tmp_path, text)
    assert found[0] == "node.listen is required (is node.lisen a misspelling of it?)"
    assert found[1] == "node.max_channels must be between 1 and 1048576, got 0"
    assert found[2].startswith("unknown key node.lisen (did you mean listen? known keys: ")
    assert found[3] == "lift.life_s must be seconds from 1 to 86400, got 0"
    assert found[4].startswith("unknown key lift.auto_clar (did you mean auto_clear? ")
    assert "referee, referees" in found[4]
    assert found[5] == ("unknown key node2 (did you mean node? known keys: clearinghouse, "
                        "lift, log, metrics, node, peers, relay)")
    assert len(found) == 6


@pytest.mark.parametrize("text, complaint", [
    (GOOD.replace('name = "alice"', 'name = ""'), "node.name must be 1 to 64 printable "
     "characters (no line breaks, tabs or other control characters), not empty"),
    (GOOD + '[metrics]\nlisten = "localhost:7901"\n', "metrics.listen localhost:7901 is "
     "node.listen's address too"),
    (GOOD + "idle_timeout = 0\n", "node.idle_timeout must be between 0.05 and 86400 seconds, "
     "got 0"),
    (GOOD + "handshake_timeout = nan\n", "node.handshake_timeout must be between 0.05 and 3600 "
     "seconds, got nan"),
    (GOOD + "idle_timeout = inf\n", "node.idle_timeout must be between 0.05 and 86400 seconds, "
     "got inf"),
    (GOOD + f"handshake_timeout = 1{'0' * 400}\n", "node.handshake_timeout must be between "
     "0.05 and 3600 seconds, got 1000000000000000000000000000000000000000"),  # not cast
    (GOOD + f"[lift]\nlife_s = 1{'0' * 400}\n", "lift.life_s must be seconds from 1 to"),
    (GOOD + f"[lift]\ninterval_s = 1{'0' * 400}\n", "lift.interval_s must be seconds from 1 "
     "to 86400"),
    (GOOD + 'idle_timeout = "sixty"\n', "node.idle_timeout must be a number, got 'sixty'"),
    (GOOD + "roles = [\"house\"]\n", "node.roles has unknown role 'house' (known: clearinghouse)"),
    (GOOD + "roles = [{}]\n", "node.roles has unknown role {} (known: clearinghouse)"),
    (GOOD + "max_frame = true\n", "node.max_frame must be an integer, not a boolean"),
    (GOOD + 'network = "my.net"\n', "node.network must start with a letter or '_' and hold "
     "up to 64 letters, digits, '_', '-' (relay addresses name it: RELAY/NETWORK/VIEW), got "
     "'my.net'"),
    (GOOD.replace('data_dir = "data"', 'data_dir = ""'),
     "node.data_dir is empty: name the folder for the key and the database"),
    (GOOD + "max_frame = 65536\n",
     "node.max_frame must be between 1048576 and 67108864 bytes, got 65536"),
    (GOOD + '\n[[peers]]\nname = "bob"\nagent = "x"\naddress = "127.0.0.1:7902"\n',
     "peers[0].agent is not an agent id (agent id must be 43 base64url characters: 'x')"),
    # as peers.add refuses them: two agents at one port (each handshake fails one of them),
    # and an address nobody can be dialled at
    (GOOD + f'\n[[peers]]\nname = "bob"\nagent = "{BOB}"\naddress = "127.0.0.1:7902"\n'
     f'[[peers]]\nname = "carol"\nagent = "{CAROL}"\naddress = "localhost:7902"\n',
     "peers[1].address localhost:7902 is peers[0]'s too: one address is one node"),
    (GOOD + f'\n[[peers]]\nname = "bob"\nagent = "{BOB}"\naddress = "0.0.0.0:7902"\n',
     "peers[0].address 0.0.0.0:7902 is not an address a node can be dialled at"),
    (GOOD + '\n[log]\nlevel = "loud"\n',
     "log.level must be one of debug, info, warning, error, got 'loud'"),
    (GOOD + '\n[log]\nformat = "xml"\n', "log.format must be one of text, json, got 'xml'"),
    (GOOD + '\n[lift]\nminimum = -5\n', "lift.minimum must be a whole number of mCHIP from 1 "
     "to 1000000000000000, got -5"),
    # taken, it stopped the node at its first auto clearing (too large for SQLite)
    (GOOD + '\n[lift]\nminimum = 99999999999999999999\n', "lift.minimum must be a whole "
     "number of mCHIP from 1 to 1000000000000000, got 99999999999999999999"),
    (GOOD + '\n[lift]\ninterval_s = 0\n', "lift.interval_s must be seconds from 1 to 86400, "
     "got 0"),
    (GOOD + '\n[lift]\nreferees = ["x"]\n', "lift.referees must be a list of agent ids, got "
     "['x']"),
    (GOOD + '\n[[relay.access]]\nprincipal = "bob"\nresource = "*"\n',
     "relay.access[0].principal must be an agent id or *, got 'bob'"),
    (GOOD + '\n[[relay.verify]]\nview = "*"\nsigners = ["bob"]\n',
     "relay.verify[0].signers 'bob' is not an agent id (43 characters of base64url, as "
     "getinfo's agent shows it)"),
    (GOOD + '\n[[relay.verify]]\nview = "*"\nsigners = []\n',
     "relay.verify[0].signers must be a non-empty list of agent ids (a view is never accepted "
     "unverified), got []"),
    (GOOD + '\n[[relay.access]]\nprincipal = "*"\nresource = "talley:*"\n',
     "relay.access[0].resource 'talley:*' matches no view this node serves (views: "
     "tally:<uuid>, tally:<uuid>:chits, user:<cuid>:balance, lift:<uuid>, node:info; one '*' "
     "at the end matches a prefix)"),
    (GOOD + '\n[[relay.access]]\nprincipal = "*"\nresource = "nothing:here"\n',
     "relay.access[0].resource 'nothing:here' matches no view this node serves"),
    (GOOD + f'\n[[relay.verify]]\nview = "talley:*"\nsigners = ["{BOB}"]\n',
     "relay.verify[0].view 'talley:*' matches no view a source serves (views: "),
    (GOOD + f'\n[[relay.verify]]\nview = "nod:info"\nsigners = ["{BOB}"]\n',
     "relay.verify[0].view 'nod:info' matches no view a source serves"),
    (GOOD + f'\n[[relay.verify]]\nview = "tally:xyz"\nsigners = ["{BOB}"]\n',
     "relay.verify[0].view 'tally:xyz': 'xyz' is not a lowercase UUID"),
    (GOOD + f'\n[[relay.verify]]\nview = "tally:*:chits"\nsigners = ["{BOB}"]\n',
     "relay.verify[0].view 'tally:*:chits': '*' may appear only once, at the end"),
    (GOOD + '\n[[relay.access]]\nprincipal = "*"\nresource = "tally:0B34937B"\n',
     "relay.access[0].resource 'tally:0B34937B': '0B34937B' is not a lowercase UUID"),
    (GOOD + '\n[[relay.verify]]\nview = "*"\nsigners = "abc"\n', "relay.verify[0].signers "),
    (GOOD + '\n[[relay.access]]\nprincipal = "*"\nresource = "tally*:x"\n',
     "relay.access[0].resource 'tally*:x': '*' may appear only once, at the end"),
    (GOOD + f'[[peers]]\nname = "bob"\nagent = "{BOB}"\naddress = "127.0.0.1:7902"\n'
     f'[[peers]]\nname = "bob"\nagent = "{CAROL}"\naddress = "127.0.0.1:7903"\n',
     "peers[1].name 'bob' is peers[0]'s too: names tell peers apart"),
    (GOOD + f'[[peers]]\nname = "bob"\nagent = "{BOB}"\naddress = "127.0.0.1:7902"\n'
     f'[[peers]]\nname = "bob2"\nagent = "{BOB}"\naddress = "127.0.0.1:7903"\n',
     "peers[1].agent is peers[0]'s too: one entry per peer"),
    (GOOD + f'[[peers]]\nname = "a\\nb"\nagent = "{BOB}"\naddress = "127.0.0.1:7902"\n',
     "peers[0].name must be 1 to 64 printable characters (no line breaks, tabs or other "
     "control characters), not 'a\\nb'"),
    (GOOD + '\n[metrics]\nlisten = "nowhere"\n', "metrics.listen is not HOST:PORT"),
    (GOOD.replace("127.0.0.1:7901", "0.0.0.0:7901"),
     'node.listen 0.0.0.0:7901 listens on every interface, an address peers cannot dial: set '
     'node.advertise = "HOST:PORT", where they should dial'),
    (GOOD + 'advertise = "[::]:7901"\n', "node.advertise [::]:7901 is not an address peers"),
    # as peers.add refuses them: the node's own address (it would dial itself, and its hint
    # named the agent line), the clearing house's under another agent
    (GOOD + f'[[peers]]\nname = "q"\nagent = "{BOB}"\naddress = "localhost:7901"\n',
     "peers[0].address localhost:7901 is this node's own ([node] listen): a node is not its "
     "own peer"),
    (GOOD + 'advertise = "h1.example.org:7000"\n'
     f'[[peers]]\nname = "q"\nagent = "{BOB}"\naddress = "H1.example.org:7000"\n',
     "peers[0].address H1.example.org:7000 is this node's own ([node] advertise)"),
    (GOOD + f'[[peers]]\nname = "q"\nagent = "{BOB}"\naddress = "127.0.0.1:7950"\n'
     f'[clearinghouse]\nagent = "{CAROL}"\naddress = "127.0.0.1:7950"\n',
     f"peers[0].address 127.0.0.1:7950 is the clearing house's ([clearinghouse] address, "
     f"agent {CAROL})"),
    (GOOD + '[peers]\nname = "a"\n', "peers must be a list of tables: write each entry under "
     "[[peers]] (two brackets), not [peers]"),
])
def test_one_problem(tmp_path, text, complaint):
    found = complaints(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(complaint), found


def test_an_entry_that_repeats_two_others_says_both(tmp_path):
    found = complaints(tmp_path, GOOD + f'[[peers]]\nname = "p"\nagent = "{BOB}"\n'
                       'address = "127.0.0.1:7902"\n'
                       f'[[peers]]\nname = "p"\nagent = "{CAROL}"\naddress = "127.0.0.1:7902"\n')
    assert found == ["peers[1].name 'p' is peers[0]'s too: names tell peers apart",
                     "peers[1].address 127.0.0.1:7902 is peers[0]'s too: one address is one "
                     "node, whose key is one agent"], found


@pytest.mark.parametrize("text, first", [("", "node is required"),
                                         ("node = 3\n", "node must be a table, got 3")])
def test_a_missing_node_table_names_what_it_must_hold(tmp_path, text, first):
    assert complaints(tmp_path, text) == [first, "node.name is required",
                                          "node.data_dir is required", "node.listen is required"]


TOML_VALUES = st.recursive(
    st.none().map(lambda _: "") | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=10)
NODE_KEYS = ["name", "data_dir", "listen", "advertise", "roles", "max_frame", "key",
             "idle_timeout", "max_channels", "nmae"]
PLAUSIBLE = ["alice", "data", "127.0.0.1:7301", "0.0.0.0:7301", "[::]:0", "debug", 30,
             ["clearinghouse"], "wKIbDc-V_mRGqnY-o0zYiOBvUq5Iu6orALZXJk9tJzU"]
TABLES = {"node": NODE_KEYS, "lift": ["referee", "referees", "life_s", "minimum", "auto_clear"],
          "relay": ["access", "verify"], "log": ["level", "format"], "metrics": ["listen"],
          "clearinghouse": ["agent", "address"], "peers": []}


@st.composite
def configs(draw) -> dict:
    raw = {}
    for table in draw(st.lists(st.sampled_from(sorted(TABLES)), unique=True, max_size=5)):
        keys = TABLES[table]
        if not keys or draw(st.booleans()):
            raw[table] = draw(TOML_VALUES)
        else:
            raw[table] = {key: draw(TOML_VALUES | st.sampled_from(PLAUSIBLE))
                          for key in draw(st.lists(st.sampled_from(keys), unique=True))}
    return raw


@settings(max_examples=300, deadline=None)
@given(configs())
def test_any_table_loads_or_is_refused_with_a_user_error(raw):
    """Whatever a config holds, reading it ends in a Config or a UserError naming the file:
    never another exception (a traceback) for the user to read."""
    source = Path("/nowhere/alice.toml")
    try:
        parse_config(raw, source)
    except UserError as refused:
        assert all(line.startswith(f"{source}: ") for line in str(refused).splitlines())


def test_relay_problems_are_named_with_the_others_at_once(tmp_path):
    """An empty signers list and a bad resource were checked only as the node built its
    relay service, one at a time, behind every other problem of the file, and named by the
    classes they went into (``VerificationPolicy.signers``): each is now named by its key,
    with the rest."""
    found = complaints(tmp_path, GOOD + '\n[lift]\nlife_s = 0\n'
                       '\n[[relay.verify]]\nview = "*"\nsigners = []\n'
                       '\n[[relay.access]]\nprincipal = "bob"\nresource = "tally*:x"\n')
    assert [problem.split(" ")[0] for problem in found] == [
        "relay.access[0].principal", "relay.access[0].resource", "relay.verify[0].signers",
        "lift.life_s"], found
    assert not any("Policy" in problem or "Rule" in problem for problem in found)


@pytest.mark.parametrize(("one", "other", "same"), [
    ("127.0.0.1:7101", "localhost:7101", True),
    ("Node.Example.org:7101", "node.example.org:7101", True),
    ("[::1]:7101", "[0:0::1]:7101", True),
    ("127.0.0.1:7101", "127.1:7101", True),
    ("127.0.0.1:7101", "2130706433:7101", True),
    ("127.0.0.1:7101", "localhost.:7101", True),
    ("127.0.0.1:7101", "[::ffff:127.0.0.1]:7101", True),
    ("127.0.0.2:7101", "127.0.0.1:7101", False),
    ("node.example.org:7101", "node.example.org.:7101", True),
    ("127.0.0.1:7101", "127.0.0.1:7102", False),
    ("[::1]:7101", "127.0.0.1:7101", False),  # another socket
])
def test_one_listening_port_is_known_however_its_address_is_written(one, other, same):
    """What peers.add and agentd init compare when they refuse a second node at one address."""
    assert (address_key(one) == address_key(other)) is same


def test_the_readme_gives_every_limit_its_range():
    """The [node] limits were refused outside ranges the README did not give: a user who set
    stranger_write_rate = 1000 met an error it never hinted at."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()

    def shown(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else f"{value:g}"

    for key, (low, high) in LIMIT_RANGES.items():
        [row] = [line for line in readme.splitlines() if line.startswith(f"| `[node] {key}` |")]
        wanted = f"({shown(low)} or more)" if high >= 1 << 40 else \
            f"({shown(low)} to {shown(high)})"
        assert row.endswith(f" {wanted} |"), (key, wanted, row)
