"""The names steps use, checked against what the sim declares: devices and their
interfaces, spawn ids for wait-for, captures, and `${binary.NAME}`."""

from __future__ import annotations

import re

from . import model
from .format_keys import DEVICE_ACTIONS
from .step_tables import split_check

SimError = model.SimError
A = model.Action

_BRACE_RE = re.compile(r"\$\{([^${}]+)\}")


def check_references(
    steps: list[model.Step],
    keys: list[str],
    topology: model.Topology,
    binaries: set[str],
    path: str,
) -> None:
    """Raise SimError at the first name a step uses that nothing declares (`keys`: each
    step's `step[N]` for messages)."""
    devices = {d.name: d for d in topology.devices}
    routers = {r.name for r in topology.routers}
    defined: set[str] = set()
    for s in steps:
        if s.action in (A.RUN, A.SPAWN):
            defined |= {f"{s.key}.{c}" for c in s.captures}
        elif s.action is A.GEN_CERTS:
            defined |= {f"{s.id}.cert_pem_path", f"{s.id}.key_pem_path"}
        elif s.action is A.GEN_FILE:
            defined.add(f"{s.id}.path")
    spawned: set[str] = set()

    def from_(s: model.Step) -> str:
        # The origin's "(use = NAME, its step J)" part: where a template/group step came from.
        via = s.origin.rpartition("] ")[2] if s.origin.endswith(")") else ""
        return f" {via}" if via.startswith("(") else ""

    def need_capture(ref: str, s: model.Step, key: str, how: str) -> None:
        if ref not in defined:
            raise SimError(
                path,
                key,
                f"{how} {ref!r}, but no step defines that capture{from_(s)}; "
                "captures are <step id>.<name> of a run/spawn step's [captures], "
                "<id>.cert_pem_path/.key_pem_path of gen-certs, <id>.path of gen-file",
            )

    for s, key in zip(steps, keys, strict=True):
        if s.device is not None and (s.action in DEVICE_ACTIONS or s.device):
            dev = devices.get(s.device)
            if dev is None:
                known = ", ".join(devices) or "none"
                why = (
                    f"{s.device!r} is a router; steps run on devices"
                    if s.device in routers
                    else f"names no device: {s.device!r}"
                )
                raise SimError(path, f"{key}.device", f"{why} (devices: {known}){from_(s)}")
            ifnames = [i.name for i in dev.interfaces]
            for field_name in ("interface", "to"):
                iface = getattr(s, field_name)
                if iface is not None and iface not in ifnames:
                    raise SimError(
                        path,
                        f"{key}.{field_name}",
                        f"{s.device} has no interface {iface!r} (has {', '.join(ifnames)})",
                    )
        if s.action is A.WAIT_FOR and s.id not in spawned:
            raise SimError(
                path,
                f"{key}.id",
                f"no earlier spawn step has id {s.id!r} (spawned so far: "
                f"{', '.join(sorted(spawned)) or 'none'}){from_(s)}",
            )
        if s.action is A.SPAWN:
            spawned.add(s.id or "")
        for r in s.requires:
            need_capture(r, s, f"{key}.requires", "requires")
        for field_name, ref in s.results.items():
            need_capture(ref, s, f"{key}.results.{field_name}", "names")
        for check in s.checks:
            need_capture((split_check(check) or (check,))[0], s, f"{key}.checks", "checks")
        texts = [("cmd", t) for t in s.cmd] + [(f"env.{k}", v) for k, v in s.env.items()]
        texts += [("content", s.content)] + [("san", t) for t in s.san]
        for where, text in texts:
            for m in _BRACE_RE.finditer(text):
                ref = m[1]
                if ref.startswith("binary."):
                    if ref[len("binary.") :] not in binaries:
                        raise SimError(
                            path,
                            f"{key}.{where}",
                            f"${{{ref}}} names no declared binary (declared: "
                            f"{', '.join(sorted(binaries)) or 'none'}){from_(s)}",
                        )
                elif "." in ref:
                    need_capture(ref, s, f"{key}.{where}", f"uses ${{{ref}}}: capture")
