"""A work dir written by hand after RUNNER-FACTS.md section 5, for the viewer's tests.

Two invocations: `sim-260301-120000` with a ping sim (latency_ms) and an iperf sim
(down_bytes), both ok; `sim-260301-130000` (`latest`) with a failing sim whose sim.json holds
the error and whose events.jsonl ends in a half-written line. Next to the work dir, a
secret file that no request may read (links into it are planted in a run folder).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

INV_OK = "sim-260301-120000"
INV_FAIL = "sim-260301-130000"
SECRET = "TOP-SECRET-OUTSIDE-WORKDIR"


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))


def _router(
    name: str, ns: str, uplink: str, cidr: str, nat: str | None, devices: list[str]
) -> dict:
    return {
        "ns": ns,
        "region": None,
        "nat": nat or "none",  # as the runners write it (the reference ui needs a string)
        "upstream": None,
        "uplink_ip": uplink,
        "downstream_cidr": cidr,
        "downstream_gw": cidr.replace("0/24", "1"),
        "devices": devices,
    }


def _device(ns: str, router: str, ip: str, cond: object = None) -> dict:
    return {
        "ns": ns,
        "default_via": "eth0",
        "interfaces": [{"name": "eth0", "router": router, "ip": ip, "link_condition": cond}],
    }


def _topology(sim: str, prefix: str) -> tuple[dict, dict]:
    """routers, devices: the ping sim has a NAT router, the others one public router."""
    if sim.startswith("ping"):
        routers = {
            "dc": _router("dc", f"{prefix}-dc", "198.18.0.10", "198.18.1.0/24", None, ["receiver"]),
            "home": _router(
                "home", f"{prefix}-home", "198.18.0.11", "10.0.1.0/24", "home", ["sender"]
            ),
        }
        devices = {
            "receiver": _device(f"{prefix}-receiver", "dc", "198.18.1.2"),
            "sender": _device(
                f"{prefix}-sender",
                "home",
                "10.0.1.2",
                {"latency_ms": 100, "jitter_ms": 0, "loss_pct": 0.0, "rate_kbit": None},
            ),
        }
    else:
        routers = {
            "dc": _router(
                "dc", f"{prefix}-dc", "198.18.0.10", "198.18.1.0/24", None, ["client", "server"]
            )
        }
        devices = {
            "client": _device(f"{prefix}-client", "dc", "198.18.1.2"),
            "server": _device(f"{prefix}-server", "dc", "198.18.1.3"),
        }
    return routers, devices


def write_sim(inv_dir: Path, sim: str, kind: str, stamp: str, partial_event: bool = False) -> dict:
    """One sim folder; kind is ping, iperf or fail. Returns its progress entry."""
    d = inv_dir / sim
    prefix = f"pb{zlib.crc32(sim.encode()) % 0xFFFF:04x}"
    routers, devices = _topology(sim if kind != "iperf" else "iperf", prefix)
    ix = {"bridge": f"{prefix}-ix", "cidr": "198.18.0.0/24", "gw": "198.18.0.1"}
    events = [
        {
            "opid": 1,
            "timestamp": f"{stamp}:00Z",
            "kind": "lab_created",
            "lab_prefix": prefix,
            "label": sim,
        },
        {"opid": 2, "timestamp": f"{stamp}:00Z", "kind": "ix_created", **ix},
    ]
    for name, r in sorted(routers.items()):
        events.append(
            {
                "opid": len(events) + 1,
                "timestamp": f"{stamp}:01Z",
                "kind": "router_added",
                "name": name,
                **r,
            }
        )
    for name, dev in sorted(devices.items()):
        events.append(
            {
                "opid": len(events) + 1,
                "timestamp": f"{stamp}:01Z",
                "kind": "device_added",
                "name": name,
                **dev,
            }
        )
    lines = "".join(json.dumps(e) + "\n" for e in events)
    if partial_event:
        lines += '{"opid": 99, "timestamp": "' + stamp + ':05Z", "kind": "link_do'
    _write(d / "events.jsonl", lines)
    _write(
        d / "state.json",
        {
            "opid": len(events),
            "lab_prefix": prefix,
            "label": sim,
            "status": "stopped",
            "created_at": f"{stamp}:00Z",
            "ix": ix,
            "routers": routers,
            "devices": devices,
            "regions": {},
            "region_links": [],
        },
    )
    error = None
    if kind == "ping":
        step = {
            "id": "ping-check",
            "duration": None,
            "up_bytes": None,
            "down_bytes": None,
            "latency_ms": "100.512",
        }
        _write(
            d / "device.sender.ping-check.stdout.log",
            "PING 198.18.1.2 56(84) bytes of data.\n"
            "64 bytes from 198.18.1.2: icmp_seq=1 ttl=62 time=100 ms\n\n"
            "rtt min/avg/max/mdev = 100.301/100.512/100.811/0.210 ms\n",
        )
    elif kind == "iperf":
        step = {
            "id": "iperf-client",
            "duration": "2.000135",  # captures: strings, as the Rust runner writes them
            "up_bytes": None,
            "down_bytes": "262144000",
            "latency_ms": None,
        }
        _write(
            d / "device.client.iperf-client.stdout.log",
            '{"end": {"sum_received": {"bytes": 262144000}}}\n',
        )
        _write(d / "device.server.iperf-server.stdout.log", "Server listening on 5201\n")
    else:
        step = None
        _write(d / "device.sender.ping-check.stdout.log", "PING 198.18.1.2 56(84) bytes of data.\n")
        _write(d / "device.sender.ping-check.stderr.log", "ping: connect: Network is unreachable\n")
        error = {
            "phase": "steps",
            "message": "step 'ping-check' exited with code 2"
            " (see device.sender.ping-check.stderr.log)",
            "step": {"index": 0, "action": "run", "id": "ping-check", "device": "sender"},
        }
    status = "error" if error else "ok"
    _write(
        d / "sim.json",
        {
            "sim": sim,
            "sim_dir": sim,
            "status": status,
            "started_at": f"{stamp}:00Z",
            "ended_at": f"{stamp}:04Z",
            "runtime_ms": 4210,
            "setup": {
                "sim_path": f"/app/sims/{sim}.toml",
                "topology_ref": None,
                "topology_mode": "inline",
                "routers": len(routers),
                "devices": len(devices),
                "regions": 0,
                "steps": 1 if kind != "iperf" else 3,
            },
            "error": error,
        },
    )
    if step:
        _write(d / "results.json", {"sim": sim, "steps": [step]})
        _write(d / "results.md", f"| step |\n|---|\n| {step['id']} |\n")
    return {
        "sim": sim,
        "status": status,
        "sim_dir": sim,
        "runtime_ms": 4210,
        "sim_json": f"{sim}/sim.json",
        "error": error["message"] if error else None,
        "_steps": [step] if step else [],
    }


def write_invocation(work: Path, inv: str, sims: list[tuple[str, str]], partial: str = "") -> Path:
    """An invocation folder with its sims, progress.json, manifest.json, combined results."""
    d = work / inv
    stamp = f"20{inv[4:6]}-{inv[6:8]}-{inv[8:10]}T{inv[11:13]}:{inv[13:15]}"
    entries = [write_sim(d, sim, kind, stamp, partial_event=(sim == partial)) for sim, kind in sims]
    combined = {
        "runs": [
            {"run": inv, "sim_dir": e["sim_dir"], "sim": e["sim"], "steps": e.pop("_steps")}
            for e in entries
        ]
    }
    ok = sum(e["status"] == "ok" for e in entries)
    common = {"run": inv, "started_at": f"{stamp}:00Z", "simulations": entries}
    _write(
        d / "progress.json",
        {
            **common,
            "status": "done",
            "updated_at": f"{stamp}:09Z",
            "total": len(entries),
            "completed": len(entries),
            "ok": ok,
            "error": len(entries) - ok,
            "current_sim": None,
        },
    )
    _write(
        d / "manifest.json",
        {
            **common,
            "status": "done",
            "ended_at": f"{stamp}:09Z",
            "runtime_ms": 9000,
            "success": ok == len(entries),
            "environment": {"os": "linux", "arch": "x86_64"},
        },
    )
    if ok:
        _write(d / "combined-results.json", {"runs": [r for r in combined["runs"] if r["steps"]]})
        _write(d / "combined-results.md", "| Sim | N | Max Down | Max Up |\n")
    return d


def make_workdir(root: Path) -> Path:
    """The fixture work dir under root (root/work), with root/outside/secret.txt beside it."""
    work = root / "work"
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    write_invocation(work, INV_OK, [("ping-e2e", "ping"), ("iperf-e2e", "iperf")])
    write_invocation(work, INV_FAIL, [("broken-e2e", "fail")], partial="broken-e2e")
    os.symlink(INV_FAIL, work / "latest")
    # Links leading out of the work dir: a file and a folder in a run folder, and a
    # would-be run folder that is a link (the scan skips links).
    run = work / INV_OK / "ping-e2e"
    os.symlink(outside / "secret.txt", run / "device.sender.leak.stdout.log")
    os.symlink(outside, run / "outlink")
    os.symlink(outside, work / INV_OK / "linked-run")
    (outside / "events.jsonl").write_text("")
    return work


def test_fixture_has_the_layout(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    inv = work / INV_OK
    assert json.loads((inv / "progress.json").read_text())["total"] == 2
    assert [r["sim"] for r in json.loads((inv / "combined-results.json").read_text())["runs"]] == [
        "ping-e2e",
        "iperf-e2e",
    ]
    failing = json.loads((work / "latest" / "broken-e2e" / "sim.json").read_text())
    assert failing["error"]["step"]["id"] == "ping-check"
    assert not (work / "latest" / "broken-e2e" / "events.jsonl").read_text().endswith("\n")
