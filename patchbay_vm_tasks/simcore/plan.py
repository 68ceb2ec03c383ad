"""The expanded plan that `sim.check` prints."""

from __future__ import annotations

import shlex

from . import model
from .conditions import describe_condition
from .tomlfiles import show_path

A = model.Action


def _step_detail(s: model.Step) -> str:
    if s.action in (A.RUN, A.SPAWN):
        extra = f" ready_after={s.ready_after:g}s" if s.ready_after else ""
        return f"cmd: {shlex.join(s.cmd)}{extra}"
    if s.action is A.WAIT:
        return f"duration={s.duration:g}s"
    if s.action is A.WAIT_FOR:
        return f"timeout={s.timeout:g}s"
    if s.action is A.SET_LINK_CONDITION:
        iface = s.interface or "(current default)"
        return f"interface={iface} condition={describe_condition(s.condition)}"
    if s.action in (A.LINK_DOWN, A.LINK_UP):
        return f"interface={s.interface}"
    if s.action is A.SET_DEFAULT_ROUTE:
        return f"to={s.to}"
    if s.action is A.GEN_CERTS:
        return f"cn={s.cn}" + (f" san={','.join(s.san)}" if s.san else "")
    if s.action is A.GEN_FILE:
        return f"content: {len(s.content)} chars"
    if s.action is A.ASSERT:
        return "checks: " + "; ".join(s.checks)
    return ""


def plan_text(sim: model.Sim) -> str:
    """The expanded plan that `sim.check` prints: topology, binaries, one line a step."""
    topo = sim.topology
    lines = [f"sim {sim.name}  ({show_path(sim.path)})"]
    lines.append(
        f"topology: {sim.topology_ref} (topos/{sim.topology_ref}.toml)"
        if sim.topology_ref
        else "topology: inline"
    )
    lines.append(f"routers ({len(topo.routers)}):")
    for r in topo.routers:
        bits = [f"nat={r.nat.value if r.nat else 'none'}", f"upstream={r.upstream or 'ix'}"]
        if r.region:
            bits.append(f"region={r.region}")
        if r.ip_support is not model.IpSupport.V4_ONLY:
            bits.append(f"ip={r.ip_support.value}")
        lines.append(f"  {r.name}  " + "  ".join(bits))
    lines.append(f"devices ({len(topo.devices)}):")
    for d in topo.devices:
        lines.append(f"  {d.name}  default_via={d.default_via}")
        for i in d.interfaces:
            impair = f"  impair={describe_condition(i.impair)}" if i.impair else ""
            lines.append(f"    {i.name} -> {i.gateway}{impair}")
    if topo.regions:
        lines.append("regions:")
        for name, lat in sorted(topo.regions.items()):
            pairs = ", ".join(f"{k}={v:g}ms" for k, v in sorted(lat.items()))
            lines.append(f"  {name}: {pairs or '-'}")
    lines.append(f"binaries ({len(sim.binaries)}):")
    for b in sim.binaries.values():
        src = [
            f"{k}={v}"
            for k, v in (
                ("path", b.path),
                ("url", b.url),
                ("repo", b.repo),
                ("commit", b.commit if b.repo else None),
                ("example", b.example),
                ("bin", b.bin),
            )
            if v
        ]
        if b.features:
            src.append(f"features={','.join(b.features)}")
        if b.all_features:
            src.append("all-features")
        lines.append(f"  {b.name}  {b.mode}  {' '.join(src)}  ({show_path(b.origin)})")
    lines.append(f"steps ({len(sim.steps)}):")
    width = len(str(max(len(sim.steps) - 1, 0)))
    for s in sim.steps:
        who = " ".join(x for x in (f"id={s.id}" if s.id else "", s.device and f"@{s.device}") if x)
        lines.append(f"  {s.index:>{width}}  {s.action.value}  {who}  {_step_detail(s)}".rstrip())
    for w in sim.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
