"""The builtin runner's step logic (simcore/steps.py): interpolation, captures, asserts, results."""

from __future__ import annotations

import re
import threading
import time

import pytest

from patchbay_vm_tasks.simcore import model, steps

LAB = {"NETSIM_IP_PROVIDER": "198.18.1.2", "NETSIM_IP_RELAY_ETH1": "10.0.1.3", "mixed": "m"}
CAPS = {"provider.endpoint_id": "abc123", "p.empty": ""}


def make_vars(captures: dict[str, str] | None = None) -> steps.Vars:
    caps = CAPS if captures is None else captures

    def capture(key: str) -> str:
        if key not in caps:
            raise steps.CaptureTimeout(f"no value for capture '{key}'")
        return caps[key]

    return steps.Vars(LAB, {"transfer": "/bin/transfer"}, capture, {"relay": "relay: not staged"})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("plain", "plain"),
        ("$NETSIM_IP_PROVIDER", "198.18.1.2"),
        ("$NETSIM_IP_provider", "198.18.1.2"),  # exact, then upper-case
        ("https://$NETSIM_IP_provider:3340", "https://198.18.1.2:3340"),
        ("$mixed", "m"),  # exact match wins over upper-case
        ("$NETSIM_IP_relay_eth1/x", "10.0.1.3/x"),
        ("$UNSET_VAR stays", "$UNSET_VAR stays"),
        ("cost $5", "cost $5"),
        ("a $ b", "a $ b"),
        ("${binary.transfer} fetch", "/bin/transfer fetch"),
        ("${provider.endpoint_id}", "abc123"),
        ("${NETSIM_IP_PROVIDER}", "198.18.1.2"),
        ("x${provider.endpoint_id}y$NETSIM_IP_PROVIDER", "xabc123y198.18.1.2"),
    ],
)
def test_interpolate(text: str, want: str) -> None:
    assert steps.interpolate(text, make_vars()) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${binary.nope}", "unknown binary '${binary.nope}'"),
        ("${binary.relay}", "relay: not staged"),  # declared but not resolvable here
        ("${NOPE}", "unknown variable '${NOPE}'"),
        ("${a.b}", "no value for capture 'a.b'"),
        ("${unclosed", "unclosed"),
    ],
)
def test_interpolate_errors(text: str, message: str) -> None:
    with pytest.raises(steps.StepError, match=message.replace("$", r"\$").replace("{", r"\{")):
        steps.interpolate(text, make_vars())


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["x", "--remote", "${p.empty}", "y"], ["x", "y"]),  # emptied by interpolation: dropped
        (["x", "--remote", "", "y"], ["x", "--remote", "", "y"]),  # empty as written: kept
        (["x", "--remote", "${provider.endpoint_id}"], ["x", "--remote", "abc123"]),
        (["x", "pos", "${p.empty}"], ["x", "pos", ""]),  # not a flag: kept
        (["x", "--a", "${p.empty}", "--b", "${p.empty}"], ["x"]),
    ],
)
def test_interpolate_args_drops_emptied_pairs(args: list[str], want: list[str]) -> None:
    assert steps.interpolate_args(args, make_vars()) == want


DOC = {
    "end": {"sum_received": {"bytes": 1250000, "seconds": 2.5, "ok": True}},
    "list": [{"a": "x"}, {"a": None}],
    "s": "text",
}


@pytest.mark.parametrize(
    ("path", "want"),
    [
        (".end.sum_received.bytes", "1250000"),
        ("end.sum_received.bytes", "1250000"),  # leading dot optional
        (".end.sum_received.seconds", "2.5"),
        (".end.sum_received.ok", "true"),
        (".end.sum_received", '{"bytes":1250000,"seconds":2.5,"ok":true}'),  # compact JSON
        (".list.0.a", "x"),  # numeric segments index arrays; strings raw
        (".list.1.a", "null"),
        (".list.2.a", None),
        (".s", "text"),
        (".missing", None),
        (".s.deeper", None),
    ],
)
def test_pick(path: str, want: str | None) -> None:
    assert steps.pick(DOC, path) == want


TEXT, NDJSON = model.Parser.TEXT, model.Parser.NDJSON


@pytest.mark.parametrize(
    ("line", "cap", "parser", "want"),
    [
        (
            "rtt min/avg/max/mdev = 100.1/100.5/101.0/0.2 ms",
            model.Capture("avg", regex=r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/"),
            TEXT,
            "100.5",
        ),
        (
            "relay: serving on 0.0.0.0",
            model.Capture("r", regex="relay: serving on"),
            TEXT,
            "relay: serving on",
        ),  # fmt: skip
        ("nothing here", model.Capture("r", regex="serving"), TEXT, None),
        (
            '{"kind":"EndpointBound","endpoint_id":"e1"}',
            model.Capture("e", pick=".endpoint_id"),
            TEXT,
            None,
        ),  # fmt: skip  (text parser: no JSON)
        (
            '{"kind":"EndpointBound","endpoint_id":"e1","direct_addresses":["1.2.3.4:5"]}',
            model.Capture("d", match={"kind": "EndpointBound"}, pick=".direct_addresses.0"),
            NDJSON,
            "1.2.3.4:5",
        ),
        (
            '{"kind":"Other","endpoint_id":"e1"}',
            model.Capture("e", match={"kind": "EndpointBound"}, pick=".endpoint_id"),
            NDJSON,
            None,
        ),
        (
            '{"kind":"ConnectionTypeChanged","status":"Selected","addr":"a"}',
            model.Capture(
                "a", match={"kind": "ConnectionTypeChanged", "status": "Selected"}, pick="addr"
            ),  # fmt: skip
            NDJSON,
            "a",
        ),
        ("not json", model.Capture("e", pick=".x"), NDJSON, None),
        ("[1, 2]", model.Capture("e", pick=".0"), NDJSON, None),  # JSON objects only
        ("size=42", model.Capture("s", regex=r"size=(\d+)", pick=".size"), NDJSON, "42"),
        ('{"size": 7}', model.Capture("s", regex=r"size=(\d+)", pick=".size"), NDJSON, "7"),
    ],
)
def test_capture_from_line(
    line: str, cap: model.Capture, parser: model.Parser, want: str | None
) -> None:
    assert steps.capture_from_line(line, cap, parser) == want


def test_json_document_values_uses_each_pipe_whole() -> None:
    caps = {
        "bytes": model.Capture("bytes", pick=".end.sum_received.bytes"),
        "err": model.Capture("err", pipe="stderr", pick=".e"),
        "none": model.Capture("none", pick=".nope"),
    }
    pipes = {"stdout": ["{", '"end": {"sum_received": {"bytes": 5}}', "}"], "stderr": ['{"e": 1}']}
    assert steps.json_document_values(pipes, caps) == {"bytes": "5", "err": "1"}
    assert steps.json_document_values({"stdout": ["garbage"]}, caps) == {}


STORE = {"f.size": "1024", "f.kind": "direct", "n.rtt": "150.5", "e.empty": ""}


@pytest.mark.parametrize(
    ("check", "failing"),
    [
        ("f.size == 1024", "1025"),
        ("f.size != 0", "0"),
        ("f.kind contains dir", "relay"),
        ("f.size matches [0-9]+", "none"),
        ("f.size matches ^1", "2048"),
        ("n.rtt >= 100", "99.9"),
        ("n.rtt >= 150.5", "150.49"),
        ("e.empty == ", " "),  # trailing space stripped: compares with ""
    ],
)
def test_assert_passes_and_fails_once_the_value_changes(check: str, failing: str) -> None:
    asked: list[str] = []

    def lookup(key: str) -> str | None:
        asked.append(key)
        return STORE.get(key)

    steps.evaluate_check(check, lookup)  # passes: no StepError
    key = check.split()[0]
    assert asked == [key]  # the check read its capture
    changed = {**STORE, key: failing}
    with pytest.raises(
        steps.StepError, match="^" + re.escape(f"assert FAILED: '{key}' (got '{failing}')")
    ):
        steps.evaluate_check(check, changed.get)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("f.size == 1", "assert FAILED: 'f.size' (got '1024') == '1'"),
        ("f.kind != direct", "assert FAILED: 'f.kind' (got 'direct') != 'direct'"),
        ("f.kind contains relay", "assert FAILED: 'f.kind' (got 'direct') contains 'relay'"),
        ("f.kind matches ^[0-9]+$", "assert FAILED: 'f.kind' (got 'direct') matches '^[0-9]+$'"),
        ("n.rtt >= 200", "assert FAILED: 'n.rtt' (got '150.5') >= '200'"),
        ("f.kind >= 1", "assert FAILED: 'f.kind' (got 'direct') >= '1'"),  # not numeric
        ("x.y == 1", "assert: cannot resolve 'x.y'"),
        ("f.size ~ 1", "assert: unrecognised check expression"),
    ],
)
def test_assert_fails_with_message(check: str, message: str) -> None:
    with pytest.raises(steps.StepError) as e:
        steps.evaluate_check(check, STORE.get)
    assert str(e.value).startswith(message)


def test_parse_check_operator_search_order() -> None:
    # ` == ` is searched first, so it splits even when ` contains ` appears earlier.
    assert steps.parse_check("a.b contains x == y") == steps.Check("a.b contains x", "==", "y")
    assert steps.parse_check("a.b matches a != b") == steps.Check("a.b matches a", "!=", "b")


@pytest.mark.parametrize(
    ("record", "secs", "down", "up"),
    [
        ({"duration": "2000000", "down_bytes": "1000000"}, 2.0, 0.5, None),  # int = µs
        ({"duration": "2.0", "down_bytes": "1000000"}, 2.0, 0.5, None),  # float = s
        ({"duration": "10.000123", "down_bytes": "1250000000"}, 10.000123, 124.99846, None),
        ({"duration": "1", "up_bytes": "3"}, 0.000001, None, 3.0),
        ({"duration": "0", "down_bytes": "5"}, 0.0, None, None),
        ({"down_bytes": "5"}, None, None, None),
        ({"duration": "abc", "down_bytes": "5"}, None, None, None),
    ],
)
def test_elapsed_and_mb_s(record: dict, secs: float | None, down: float | None, up: float | None):
    assert steps.elapsed_s(record) == pytest.approx(secs) if secs is not None else True
    if secs is None:
        assert steps.elapsed_s(record) is None
    got_down, got_up = steps.down_mb_s(record), steps.up_mb_s(record)
    assert (got_down is None) == (down is None) and (got_up is None) == (up is None)
    if down is not None:
        assert got_down == pytest.approx(down, rel=1e-5)
    if up is not None:
        assert got_up == pytest.approx(up)


def test_collect_result() -> None:
    store = {"c.bytes": "100", "c.dur": "1.5", "p.avg": "101.2"}.get
    assert steps.collect_result("c", {"duration": "c.dur", "down_bytes": "c.bytes"}, store) == {
        "id": "c",
        "duration": "1.5",
        "up_bytes": None,
        "down_bytes": "100",
        "latency_ms": None,
    }
    # latency alone is enough for a record (ping)
    assert steps.collect_result("p", {"latency_ms": "p.avg"}, store)["latency_ms"] == "101.2"
    # the template shorthand `.cap` means `<id>.cap`
    assert steps.collect_result("c", {"duration": ".dur"}, store)["duration"] == "1.5"
    # nothing resolves: no record
    assert steps.collect_result("c", {"duration": "c.nope"}, store) is None


def test_results_markdown_shows_columns_with_values() -> None:
    md = steps.results_markdown(
        "iperf", [{"id": "c", "duration": "2.0", "down_bytes": "1000000", "up_bytes": None}]
    )
    assert md.splitlines() == [
        "| sim | id | down_bytes | elapsed_s | mb_s |",
        "| --- | -- | ---------- | --------- | ---- |",
        "| iperf | c | 1000000 | 2.000 | 0.50 |",
    ]
    ping = steps.results_markdown("ping", [{"id": "p", "latency_ms": "100.44"}])
    assert ping.splitlines()[0] == "| sim | id | latency_ms |"
    assert ping.splitlines()[2] == "| ping | p | 100.4 |"


def test_combined_markdown() -> None:
    runs = [
        {"run": "sim-1", "sim_dir": "b", "sim": "b", "steps": [{"id": "x", "duration": "1.0",
                                                                "down_bytes": "3000000"}]},
        {"run": "sim-1", "sim_dir": "a", "sim": "a", "steps": [
            {"id": "y", "duration": "2.0", "down_bytes": "1000000", "up_bytes": "4000000"},
            {"id": "z", "duration": "1.0", "down_bytes": "2000000"},
        ]},
    ]  # fmt: skip
    lines = steps.combined_markdown(runs).splitlines()
    assert lines[:4] == [
        "| Sim | N | Max Down (MB/s) | Max Up (MB/s) |",
        "| --- | - | --------------- | ------------- |",
        "| a | 2 | 2.00 | 2.00 |",  # summary sorted by sim
        "| b | 1 | 3.00 |  |",
    ]
    assert lines[4] == ""
    assert lines[5] == "| run | sim | id | down_bytes | elapsed_s | mb_s | up_bytes | up_mb_s |"
    assert lines[7] == "| sim-1 | b | x | 3000000 | 1.000 | 3.00 |  |  |"
    assert steps.combined_markdown([]).splitlines()[2:] == [""]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("relay:path:/work/bin/relay", steps.BinaryOverride("relay", "path", "/work/bin/relay")),
        ("t:fetch:https://x/y.tar.gz", steps.BinaryOverride("t", "fetch", "https://x/y.tar.gz")),
    ],
)  # fmt: skip
def test_parse_binary_override(text: str, want: steps.BinaryOverride) -> None:
    assert steps.parse_binary_override(text) == want


@pytest.mark.parametrize("text", ["relay", "relay:path", "relay:copy:/x", ":path:/x"])
def test_parse_binary_override_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="NAME:MODE:VALUE|mode must be"):
        steps.parse_binary_override(text)


def test_resolve_binaries() -> None:
    bins = {
        "p": model.Binary("p", "path", path="/opt/p"),
        "t": model.Binary("t", "target", example="transfer"),
        "r": model.Binary("r", "target", bin="iroh-relay"),
        "f": model.Binary("f", "fetch", url="https://x"),
        "o": model.Binary("o", "build", repo="r"),
        "tp": model.Binary("tp", "path", path="target:release/tp"),
    }
    present = {
        "/target/x86_64-unknown-linux-musl/release/examples/transfer",
        "/target/aarch64-unknown-linux-musl/release/iroh-relay",
    }
    overrides = [steps.BinaryOverride("o", "path", "/work/binaries/o")]
    paths, missing = steps.resolve_binaries(
        bins, overrides, target_dir="/target", exists=present.__contains__, machine="x86_64"
    )
    assert paths == {
        "p": "/opt/p",
        "t": "/target/x86_64-unknown-linux-musl/release/examples/transfer",
        "o": "/work/binaries/o",
        "tp": "/target/release/tp",
    }
    assert set(missing) == {"r", "f"}  # r: no triple dir listed (exists() is fake), f: fetch
    assert "--binary f:path:" in missing["f"]


def test_capture_store_wait_blocks_until_recorded() -> None:
    store = steps.CaptureStore()
    threading.Timer(0.1, store.record, ("a.b", "v")).start()
    assert store.wait("a.b", time.monotonic() + 5) == "v"
    with pytest.raises(steps.CaptureTimeout, match="slow"):
        store.wait("c.d", time.monotonic() + 0.1, what="slow")
    with pytest.raises(steps.Interrupted):
        store.wait("c.d", time.monotonic() + 5, lambda: True)
    store.record("a.b", "w")  # the latest value wins
    assert store.get("a.b") == "w"
