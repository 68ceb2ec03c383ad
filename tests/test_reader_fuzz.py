"""Property-based fuzzing of the sim reader (issue 19): whatever a sim file holds, reading
it ends in a sim or in the reader's own error (`SimError`, on one line), never in another
exception, a hang or a traceback. Sim files are untrusted input (SPEC 11).

Three parts, all deterministic:
- mutations (Hypothesis): a sim that reads (RICH_SIM, which uses every table and key of
  the format, or one of the corpus) with one to three changes: a value replaced by a
  hostile one, a key added with a hostile value, a key removed;
- generated sims (Hypothesis): tables of the format with plausible values and, one time
  in HOSTILE_ONE_IN, a hostile one;
- a sweep (no randomness): every value of RICH_SIM and of the file it extends, replaced
  in turn by each of SWEEP_VALUES.
Hostile values: wrong types (a list where a string belongs), 400-digit numbers, nan and
inf, nesting 600 deep, names with line breaks, slashes and shell syntax, huge strings.
`derandomize` makes every run try the same examples. What these found is kept as
explicit cases in test_hostile_sims.py.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchbay_vm_tasks.simcore import reader
from patchbay_vm_tasks.simcore.model import SimError
from patchbay_vm_tasks.simcore.tomlfiles import read_toml

MUTATED, GENERATED = 1000, 300  # Hypothesis examples; the sweep adds about 1,000 reads
FUZZ = dict(
    derandomize=True,  # the same examples on every run: CI stays deterministic
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ── writing TOML ─────────────────────────────────────────────────────────────────────


class Raw(str):
    """TOML text already written (deep nesting: written once, not at every example)."""


def toml_value(v: Any) -> str:
    """A value as inline TOML (tables inline, so any nesting is one line)."""
    if isinstance(v, Raw):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML's (no lone surrogates generated)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


# ── hostile values ───────────────────────────────────────────────────────────────────

HOSTILE_TEXT = [
    "",
    " ",
    "a\nnetns add zz\nnetns exec zz /usr/bin/touch /tmp/pwned",
    "x$(touch${IFS}pwned)",
    "fetch/1",
    "../../etc",
    ".",
    "-rf",
    "a.b",
    "é",
    "\u2028",
    "\x00",
    "~nosuchuser/x.toml",
    "/dev/zero",
    "a" * 4096,
    "9" * 400 + "s",
    "${group.nope}",
    "${binary.nope}",
    "(" * 3000,
    "a{99999999999}",
]
HOSTILE_NUMBERS = [0, -1, 1, 10**9, 10**400, -(10**400), math.nan, math.inf, -math.inf]
HOSTILE_NUMBERS += [-0.0, 1e308, 0.5, 100.5]


def nested(depth: int) -> Raw:
    """`depth` arrays and inline tables inside each other, as TOML text."""
    text = "1"
    for i in range(depth):
        text = f"[{text}]" if i % 2 else f"{{a = {text}}}"
    return Raw(text)


scalars = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from(HOSTILE_NUMBERS),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text('aZ09-_./$\n\t é{}[]"\\', max_size=8),
)
hostile = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["a", "name", "\n"]), scalars, max_size=2),
    st.sampled_from([nested(3), nested(33), nested(600)]),
)
SWEEP_VALUES = [["x"], {"a": 1}, 10**400, math.nan, "a\nb", True]


# A sim that uses every table and key of the format (and reads without error): with one
# value of it or of the file it extends replaced, every place a value goes is tried.
RICH_DECLS = """\
[[binary]]
name = "relay"
url = "http://example.invalid/relay.tar.gz"

[[step-template]]
name = "serve"
action = "spawn"
cmd = ["${binary.relay}", "--port", "0"]
parser = "ndjson"
ready_after = "1s"
[step-template.captures.port]
pick = ".port"
match = { kind = "ready" }
[step-template.results]
duration = ".port"

[[step-group]]
name = "pair"
[[step-group.step]]
kind = "run"
id = "${group.dev}-ping"
device = "${group.dev}"
cmd = ["ping", "-c1", "$NETSIM_IP_server"]
[[step-group.step]]
action = "gen-file"
id = "${group.dev}-cfg"
content = "peer ${group.dev}"
"""
RICH_SIM = """\
[[extends]]
file = "decls.toml"

[sim]
name = "rich"
binaries = "decls.toml"

[[binary]]
name = "tool"
path = "bin/tool"
features = ["a"]
all-features = false

[[prepare]]
mode = "build"
examples = ["tool"]

[[router]]
name = "isp"
nat = "cgnat"
region = "eu"
ip_support = "dual-stack"
nat_v6 = "none"

[[router]]
name = "home"
nat = "home"
upstream = "isp"

[[router]]
name = "dc"
region = "us"

[region.eu]
latencies = { us = 40 }

[region.us]
latencies = { eu = 45 }

[device.server.eth0]
gateway = "dc"
impair = "wifi"

[device.client]
default_via = "eth1"
[device.client.eth0]
gateway = "home"
[device.client.eth0.impair]
latency_ms = 20
jitter_ms = 2
loss_pct = 0.5
rate_kbit = 1000
reorder_pct = 1
duplicate_pct = 1
corrupt_pct = 0.1
[device.client.eth1]
gateway = "isp"

[device.fetcher]
count = 2
[device.fetcher.eth0]
gateway = "home"

[[step]]
use = "serve"
id = "srv"
device = "server"
env = { A = "1" }
args = ["--verbose"]
timeout = "30s"
requires = []

[[step]]
action = "run"
id = "get"
device = "fetcher"
cmd = ["curl", "http://${srv.port}"]
parser = "json"
timeout = "1m"
[step.captures.bytes]
pipe = "stderr"
regex = "bytes=(\\\\d+)"
[step.results]
down_bytes = "get.bytes"

[[step]]
use = "pair"
vars = { dev = "client" }

[[step]]
action = "wait-for"
id = "srv"
timeout = "10s"

[[step]]
action = "wait"
duration = "500ms"

[[step]]
action = "set-link-condition"
device = "client"
interface = "eth0"
condition = "mobile-3g"

[[step]]
action = "set-impair"
device = "client"
impair = { latency_ms = 5 }

[[step]]
action = "link-down"
device = "client"
interface = "eth1"

[[step]]
action = "link-up"
device = "client"
interface = "eth1"

[[step]]
action = "set-default-route"
device = "client"
to = "eth0"

[[step]]
action = "gen-certs"
id = "cert"
device = "server"
cn = "server"
san = ["server.test", "10.0.0.1"]

[[step]]
action = "assert"
check = "srv.port != 0"
checks = ["get-1.bytes >= 1", "get-0.bytes matches ^[0-9]+$"]
"""


# ── mutations ────────────────────────────────────────────────────────────────────────


def places(v: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a parsed document: the paths of its values, tables and arrays."""
    out = [path] if path else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += places(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += places(x, (*path, i))
    return out


def places_by_key(doc: Any) -> dict[str, list[tuple]]:
    """places(doc) by the name of the key they are under (array items: the array's)."""
    out: dict[str, list[tuple]] = {}
    for path in places(doc):
        name = next(str(p) for p in reversed(path) if isinstance(p, str))
        out.setdefault(name, []).append(path)
    return out


def tables(v: Any, path: tuple = ()) -> list[tuple]:
    """The paths of the tables in a parsed document (the document itself is `()`)."""
    out = [path] if isinstance(v, dict) else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += tables(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += tables(x, (*path, i))
    return out


def changed(doc: Any, path: tuple, change: Callable[[Any], Any]) -> Any:
    """`doc` with the value at `path` passed through `change` (a copy; doc untouched)."""
    if not path:
        return change(doc)
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: changed(v, rest, change) if k == head else v for k, v in doc.items()}
    return [changed(v, rest, change) if i == head else v for i, v in enumerate(doc)]


KNOWN_KEYS = sorted(
    {"name", "nat", "upstream", "region", "ip_support", "nat_v6", "count", "default_via"}
    | {"gateway", "impair", "latencies", "action", "kind", "id", "device", "cmd", "args"}
    | {"env", "requires", "timeout", "parser", "captures", "results", "ready_after"}
    | {"duration", "interface", "condition", "to", "cn", "san", "content", "check"}
    | {"checks", "use", "vars", "file", "topology", "binaries", "mode", "path", "url"}
    | {"features", "all-features", "pipe", "regex", "match", "pick", "loss_pct"}
    | {"rate_kbit", "latency_ms", "step", "router", "device", "extends", "eth0", "bogus"}
)


@st.composite
def mutation(draw: st.DrawFn, doc: dict) -> dict:
    """`doc` with one change: a value replaced (a key name is chosen first, then one of
    its places, so that every key is tried as often as the others), a key added to a
    table, or a key removed."""
    how = draw(st.sampled_from(["replace", "replace", "add", "remove"]))
    if how == "add":
        at = draw(st.sampled_from(tables(doc)))
        key, value = draw(st.sampled_from(KNOWN_KEYS)), draw(hostile)
        return changed(doc, at, lambda t: {**t, key: value})
    by_key = places_by_key(doc)
    if not by_key:
        return doc
    at = draw(st.sampled_from(by_key[draw(st.sampled_from(sorted(by_key)))]))
    if how == "remove" and isinstance(at[-1], str):
        return changed(doc, at[:-1], lambda t: {k: v for k, v in t.items() if k != at[-1]})
    value = draw(hostile)
    return changed(doc, at, lambda _: value)


def _corpus_docs() -> list[tuple[str, dict]]:
    from conftest import corpus_path

    root = corpus_path()
    if not root.is_dir():
        return []
    # Topology files read as sims too (a sim with only an inline topology).
    return [
        (str(p.relative_to(root)), read_toml(p))
        for p in sorted(root.glob("**/*.toml"))
        if p.name != "iroh-defaults.toml"
    ]


def _cases() -> list[tuple[str, str, dict[str, dict]]]:
    """(folder, the sim's file, {file: document}) of each sim the mutations start from:
    the rich sim (four times: it has every key) and each file of the corpus."""
    rich = {"rich.toml": tomllib.loads(RICH_SIM), "decls.toml": tomllib.loads(RICH_DECLS)}
    cases = [("rich", "rich.toml", rich)] * 4
    for name, doc in _corpus_docs():
        cases.append((str(Path(name).parent), Path(name).name, {Path(name).name: doc}))
    return cases


CASES = _cases()


def read_sim(path: Path, binaries_too: bool = False) -> None:
    """load_sim as a run reads it (unknown keys are warnings, so reading goes on past
    them; sim.check's strict reading stops there), the plan sim.check prints, and with
    `binaries_too` binaries_of (the host's staging). Only SimError may come out, and its
    message is one line."""
    calls: list[Callable[[], Any]] = [
        lambda: reader.plan_text(reader.load_sim(path, strict=False, extra_binaries=("tool",)))
    ]
    if binaries_too:
        calls.append(lambda: reader.binaries_of(path))
    for call in calls:
        try:
            call()
        except SimError as err:
            assert "\n" not in str(err) and "\r" not in str(err), str(err)


_written: dict[Path, str] = {}


def write(path: Path, text: str) -> None:
    """Write a file unless it already holds `text` (most examples change one file)."""
    if _written.get(path) != text:
        path.write_text(text, encoding="utf-8")
        _written[path] = text


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=MUTATED, **FUZZ)
@given(data=st.data())
def test_mutated_sims_read_or_fail_cleanly(folder: Path, data: st.DataObject) -> None:
    """A sim that reads (with its topos/ and extends files beside it, as in the corpus),
    one to three changes made to it or to the file it extends."""
    from conftest import corpus_path

    where_from, main, files = data.draw(st.sampled_from(CASES), label="sim")
    files = dict(files)
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        target = data.draw(st.sampled_from(sorted(files)), label="file")
        files[target] = data.draw(mutation(files[target]), label="change")
    sims_dir = folder / "cases" / where_from
    if not sims_dir.is_dir():
        sims_dir.mkdir(parents=True)
        if where_from != "rich":  # the corpus's topos/ and extends files, by links
            src = corpus_path() / where_from
            for rel in ("topos", "iroh-defaults.toml"):
                for there in (src / rel, src.parent / rel):
                    if there.exists() and not (sims_dir / rel).is_symlink():
                        (sims_dir / rel).symlink_to(there)
    for name, doc in files.items():
        write(sims_dir / name, toml_doc(doc))
    read_sim(sims_dir / main)


def test_rich_sim_reads(folder: Path) -> None:
    """The starting point of the mutations is itself a good sim, using every feature."""
    d = folder / "rich-original"
    d.mkdir()
    (d / "rich.toml").write_text(RICH_SIM)
    (d / "decls.toml").write_text(RICH_DECLS)
    sim = reader.load_sim(d / "rich.toml", strict=True)
    assert len(sim.steps) == 14 and len(sim.topology.devices) == 4
    assert {s.action.value for s in sim.steps} == {a for a in ACTIONS if a != "set-impair"}


def test_every_value_of_the_rich_sim_replaced(folder: Path) -> None:
    """Not random: each value of the rich sim and of the file it extends replaced in
    turn by each of SWEEP_VALUES (this is what finds `ip_support = ["x"]`: a TypeError
    from a list where a string belongs, one place among 170)."""
    d = folder / "sweep"
    d.mkdir()
    originals = {"rich.toml": tomllib.loads(RICH_SIM), "decls.toml": tomllib.loads(RICH_DECLS)}
    texts = {name: toml_doc(doc) for name, doc in originals.items()}
    tried = 0
    for target, doc in originals.items():
        for at in places(doc):
            for value in SWEEP_VALUES:
                for name in originals:
                    if name == target:
                        text = toml_doc(changed(doc, at, lambda _, v=value: v))
                    else:
                        text = texts[name]
                    write(d / name, text)
                try:
                    reader.load_sim(d / "rich.toml", strict=False)
                except SimError as err:
                    assert "\n" not in str(err), str(err)
                except Exception as exc:  # noqa: BLE001 (the failure this test is about)
                    pytest.fail(f"{target} {at} = {value!r:.60}: {type(exc).__name__}: {exc}")
                tried += 1
    assert tried > 1000


# ── generated sims ───────────────────────────────────────────────────────────────────

ROUTERS = ["dc", "home", "isp"]
DEVICES = ["client", "server", "fetcher"]
IFACES = ["eth0", "eth1"]
IDS = ["srv", "get", "cert", "file"]
REGIONS = ["eu", "us"]
ACTIONS = [
    "run", "spawn", "wait-for", "wait", "set-link-condition", "set-impair", "link-down",
    "link-up", "set-default-route", "gen-certs", "gen-file", "assert",
]  # fmt: skip
HOSTILE_ONE_IN = 40


def either(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, one time in HOSTILE_ONE_IN a hostile one: a sim holds tens
    of values and reading stops at the first bad one, so most must be good for the reader
    to get deep. (`one_of` with the good branch many times does not weight it.)"""
    return st.integers(1, HOSTILE_ONE_IN).flatmap(lambda n: hostile if n == 1 else good)


def name_of(pool: list[str]) -> st.SearchStrategy:
    return either(st.sampled_from(pool))


def keys_of(pool: list[str]) -> st.SearchStrategy:
    """A table key that should be a name: mostly from the pool, sometimes hostile text."""
    return st.tuples(st.integers(1, HOSTILE_ONE_IN), st.sampled_from(pool)).flatmap(
        lambda t: st.sampled_from(HOSTILE_TEXT) if t[0] == 1 else st.just(t[1])
    )


def table(required: dict, optional: dict) -> st.SearchStrategy:
    return st.fixed_dictionaries(required, optional=optional)


durations = name_of(["1s", "500ms", "2m", "0s", "10080m", "10081m"])
conditions = either(
    st.one_of(
        st.sampled_from(["wifi", "lan", "mobile", "dialup"]),
        table(
            {},
            {
                "latency_ms": either(st.integers(0, 500)),
                "loss_pct": either(st.floats(0, 100)),
                "rate_kbit": either(st.integers(0, 10**6)),
            },
        ),
    )
)
routers = st.lists(
    table(
        {"name": name_of(ROUTERS)},
        {
            "nat": name_of(["home", "cgnat", "none", "full-cone", "weird"]),
            "upstream": name_of(ROUTERS),
            "region": name_of(REGIONS),
            "ip_support": name_of(["v4-only", "dual-stack", "v6-only"]),
        },
    ),
    max_size=3,
)
iface = table({"gateway": name_of(ROUTERS)}, {"impair": conditions})
device = st.dictionaries(keys_of(IFACES), either(iface), min_size=1, max_size=2).flatmap(
    lambda ifaces: table(
        {k: st.just(v) for k, v in ifaces.items()},
        {"count": either(st.integers(1, 12)), "default_via": name_of(IFACES)},
    )
)
regions = st.dictionaries(
    keys_of(REGIONS),
    table({"latencies": st.dictionaries(keys_of(REGIONS), either(st.integers(0, 500)))}, {}),
    max_size=2,
)
process = {
    "cmd": either(st.lists(st.sampled_from(["echo", "${binary.relay}", "${srv.port}"]))),
    "parser": name_of(["text", "ndjson", "json", "xml"]),
    "captures": st.dictionaries(
        st.sampled_from(["port", "addr"]),
        table({}, {"pipe": name_of(["stdout", "stderr"]), "regex": name_of(["p=(\\d+)", "("])}),
        max_size=1,
    ),
    "results": st.dictionaries(st.just("duration"), name_of(["srv.port", ".port"]), max_size=1),
}
per_action: dict[str, dict] = {
    "run": process,
    "spawn": {**process, "ready_after": durations},
    "wait-for": {},
    "wait": {"duration": durations},
    "set-link-condition": {"interface": name_of(IFACES), "condition": conditions},
    "set-impair": {"interface": name_of(IFACES), "impair": conditions},
    "link-down": {"interface": name_of(IFACES)},
    "link-up": {"interface": name_of(IFACES)},
    "set-default-route": {"to": name_of(IFACES)},
    "gen-certs": {"cn": name_of(["a", "b/c"]), "san": either(st.lists(st.just("x.y")))},
    "gen-file": {"content": name_of(["hi ${srv.port}", ""])},
    "assert": {"check": name_of(["srv.port == 1", "no operator", "fetcher.x >= 2"])},
}
common = {
    "id": name_of(IDS),
    "device": name_of([*DEVICES, "fetcher-0", "dc"]),
    "env": st.dictionaries(st.sampled_from(["A", "B=C"]), name_of(["v"]), max_size=1),
    "requires": either(st.lists(st.sampled_from(["srv.port", "nope"]), max_size=2)),
    "timeout": durations,
}


def step_of(action_key: str) -> st.SearchStrategy:
    """A step of some action with the keys that action takes (and the common ones)."""
    return st.sampled_from(sorted(per_action)).flatmap(
        lambda a: table({action_key: name_of([a])}, {**common, **per_action[a]})
    )


use_step = table(
    {"use": name_of(["serve", "pair", "nope"])},
    {"id": name_of(IDS), "device": name_of(DEVICES), "vars": table({"dev": name_of(DEVICES)}, {})},
)
sims = table(
    {},
    {
        "sim": either(table({}, {"name": name_of(["fuzz"]), "binaries": name_of(["decls.toml"])})),
        "extends": either(st.lists(table({"file": name_of(["decls.toml"])}, {}), max_size=1)),
        "router": either(routers),
        "device": either(st.dictionaries(keys_of(DEVICES), either(device), max_size=3)),
        "region": either(regions),
        "step-template": either(st.lists(step_of("kind").map(lambda t: {**t, "name": "t"}))),
        "step": either(st.lists(st.one_of(step_of("action"), use_step), max_size=5)),
        "bogus": hostile,
    },
)


@settings(max_examples=GENERATED, **FUZZ)
@given(doc=sims)
def test_generated_sims_read_or_fail_cleanly(folder: Path, doc: dict) -> None:
    """A sim made of the format's tables (its extends file: the rich sim's, which has a
    template `serve` and a group `pair`), read as a run reads it and as staging does."""
    d = folder / "generated"
    if not d.is_dir():
        d.mkdir()
        (d / "decls.toml").write_text(RICH_DECLS)
    write(d / "sim.toml", toml_doc(doc))
    read_sim(d / "sim.toml", binaries_too=True)
