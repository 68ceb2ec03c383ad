"""Steps laid out: `use = TEMPLATE` and `use = GROUP` replaced by the tables they stand
for, and steps aimed at a counted device copied once per instance (RUNNER-FACTS 4)."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from . import model
from .declarations import Defs
from .format_keys import GROUP_USE_KEYS, STEP_KEYS, USE_KEYS
from .limits import (
    MAX_CHECKS,
    MAX_EXPANDED_VALUES,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    NAME_MAX_LEN,
    shorten,
)
from .step_tables import RawStep, split_check
from .tables import TableReader

SimError = model.SimError
A = model.Action

_GROUP_VAR_RE = re.compile(r"\$\{group\.([^{}]*)\}")


class _Budget:
    """What expansion may produce in all: MAX_STEPS steps and MAX_EXPANDED_VALUES values
    copied out of templates and groups, so that a big group used many times is an error
    message, not minutes of copying and gigabytes of memory."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.values = 0

    def copy(self, table: dict[str, Any], key: str) -> dict[str, Any]:
        todo: list[Any] = [table]
        while todo:
            item = todo.pop()
            self.values += 1
            if isinstance(item, dict):
                todo.extend(item.values())
            elif isinstance(item, list):
                todo.extend(item)
            if self.values > MAX_EXPANDED_VALUES:
                raise SimError(
                    self.shown,
                    key,
                    f"templates and groups expand to more than {MAX_EXPANDED_VALUES} values; "
                    "use them less or make them smaller",
                )
        return copy.deepcopy(table)

    def add(self, out: list, item: Any, key: str) -> None:
        out.append(item)
        if len(out) > MAX_STEPS:
            raise SimError(self.shown, key, f"the sim expands to more than {MAX_STEPS} steps")


def expand_steps(tr: TableReader, data: dict[str, Any], shown: str, defs: Defs) -> list[RawStep]:
    """The `[[step]]` tables with templates and groups laid out, in order."""
    out: list[RawStep] = []
    budget = _Budget(shown)
    for i, entry in enumerate(tr.array_of_tables(data, "step", shown)):
        key = f"step[{i}]"
        if "use" not in entry:
            tr.check_keys(entry, STEP_KEYS, shown, key, "[[step]]")
            budget.add(out, RawStep(copy.deepcopy(entry), key, f"{shown} {key}", False), key)
            continue
        name = tr.string(entry["use"], shown, f"{key}.use")
        if name in defs.groups:
            tr.check_keys(entry, GROUP_USE_KEYS, shown, key, "a step that uses a group")
            gvars = tr.string_table(entry.get("vars", {}), shown, f"{key}.vars")
            for j, gstep in enumerate(defs.groups[name][0]):
                origin = f"{shown} {key} (use = {name}, its step {j})"
                table = _substitute_group_vars(budget.copy(gstep, key), gvars, shown, key, name)
                _normalize_kind(table)
                if "use" in table:
                    inner = tr.string(table["use"], shown, f"{key}.use")
                    if inner in defs.groups:
                        raise SimError(
                            shown,
                            f"{key}.use",
                            f"group {name!r} uses group {shorten(repr(inner))}; groups do not nest",
                        )
                    table = use_template(tr, table, inner, defs, shown, key, name, budget)
                    budget.add(out, RawStep(table, key, f"{origin} (use = {inner})", True), key)
                else:
                    budget.add(out, RawStep(table, key, origin, False), key)
        elif name in defs.templates:
            tr.check_keys(entry, USE_KEYS, shown, key, "a step that uses a template")
            table = use_template(tr, entry, name, defs, shown, key, budget=budget)
            budget.add(out, RawStep(table, key, f"{shown} {key} (use = {name})", True), key)
        else:
            raise SimError(
                shown,
                f"{key}.use",
                f"no step template or group named {name!r} (templates: "
                f"{', '.join(sorted(defs.templates)) or 'none'}; groups: "
                f"{', '.join(sorted(defs.groups)) or 'none'})",
            )
    return out


def use_template(
    tr: TableReader,
    call: dict[str, Any],
    name: str,
    defs: Defs,
    shown: str,
    key: str,
    group: str | None = None,
    budget: _Budget | None = None,
) -> dict[str, Any]:
    """The template's table with the call site's fields laid on top (SIM-FORMAT)."""
    if name not in defs.templates:
        where = f"group {group!r} uses" if group else "uses"
        raise SimError(shown, f"{key}.use", f"{where} no step template named {shorten(repr(name))}")
    budget = budget or _Budget(shown)
    tpl = budget.copy(defs.templates[name][0], key)
    _normalize_kind(tpl)
    for k in ("id", "device", "timeout"):
        if k in call:
            tpl[k] = call[k]
    if "env" in call:
        env = tr.table(tpl.get("env", {}), shown, f"{key}.env")
        tpl["env"] = {**env, **tr.table(call["env"], shown, f"{key}.env")}
    # cmd + the template's own args + the call site's args.
    cmd = tpl.get("cmd", [])
    targs = tpl.pop("args", [])
    cargs = call.get("args", [])
    for k, v in (("cmd", cmd), ("args", targs), ("args", cargs)):
        tr.strings(v, shown, f"{key}.{k}")
    if "cmd" in tpl or cargs or targs:
        tpl["cmd"] = [*cmd, *targs, *cargs]
    if "captures" in call:
        caps = tr.table(tpl.get("captures", {}), shown, f"{key}.captures")
        tpl["captures"] = {**caps, **tr.table(call["captures"], shown, f"{key}.captures")}
    if "requires" in call:
        before = tr.strings(tpl.get("requires", []), shown, f"{key}.requires")
        added = tr.strings(call["requires"], shown, f"{key}.requires")
        tpl["requires"] = before + [r for r in added if r not in before]
    if "results" in call:
        tpl["results"] = call["results"]
    return tpl


def _normalize_kind(table: dict[str, Any]) -> None:
    # `kind` is accepted as the alias of `action` (templates and groups use it).
    if "action" not in table and "kind" in table:
        table["action"] = table["kind"]
    table.pop("kind", None)


def _substitute_group_vars(value: Any, gvars: dict[str, str], path: str, key: str, group: str):
    """`${group.k}` replaced in every string; other `${...}` stay for run time."""
    if isinstance(value, str):
        size = len(value)

        def repl(m: re.Match[str]) -> str:
            nonlocal size
            if m[1] not in gvars:
                have = ", ".join(sorted(gvars)) or "none"
                raise SimError(
                    path,
                    f"{key}.vars",
                    f"group {group!r} uses ${{group.{shorten(m[1])}}} but vars has no "
                    f"{shorten(repr(m[1]))} (given: {shorten(have)})",
                )
            size += len(gvars[m[1]]) - len(m[0])
            if size > MAX_TEXT_CHARS:
                raise SimError(
                    path,
                    f"{key}.vars",
                    f"a string of group {group!r} grows over {MAX_TEXT_CHARS} characters",
                )
            return gvars[m[1]]

        return _GROUP_VAR_RE.sub(repl, value)
    if isinstance(value, list):
        return [_substitute_group_vars(v, gvars, path, key, group) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_group_vars(v, gvars, path, key, group) for k, v in value.items()}
    return value


def expand_counts(
    steps: list[model.Step], keys: list[str], counts: dict[str, int], shown: str = "<sim>"
):
    """Copy steps aimed at a counted device once per instance (RUNNER-FACTS 4)."""
    out_steps: list[model.Step] = []
    out_keys: list[str] = []

    def add(step: model.Step, key: str) -> None:
        if step.id is not None and len(step.id) > NAME_MAX_LEN:
            raise SimError(
                shown,
                f"{key}.id",
                f"becomes {shorten(repr(step.id))} with its device's count, "
                f"over {NAME_MAX_LEN} characters; shorten it",
            )
        out_steps.append(step)
        out_keys.append(key)
        if len(out_steps) > MAX_STEPS:
            raise SimError(
                shown, key, f"the sim expands to more than {MAX_STEPS} steps (count copies them)"
            )

    for step, key in zip(steps, keys, strict=True):
        n = counts.get(step.device or "")
        if n is not None:
            for i in range(n):
                old_key = step.key
                copy_ = dataclasses.replace(
                    step,
                    device=f"{step.device}-{i}",
                    id=f"{step.id}-{i}" if step.id else None,
                    env=dict(step.env),
                    captures=dict(step.captures),
                )
                # Do better than the Rust runner: results naming the step's own
                # captures follow the instance's new key.
                copy_.results = {
                    k: f"{copy_.key}.{v[len(old_key) + 1 :]}" if v.startswith(old_key + ".") else v
                    for k, v in step.results.items()
                }
                add(copy_, key)
            continue
        if step.action is A.WAIT_FOR and step.id in counts:
            for i in range(counts[step.id]):
                add(dataclasses.replace(step, id=f"{step.id}-{i}"), key)
            continue
        if step.action is A.ASSERT:
            checks = []
            for check in step.checks:
                lhs = (split_check(check) or (check, "", ""))[0]
                prefix = lhs.split(".", 1)[0] if "." in lhs else None
                if prefix in counts:
                    checks += [
                        check.replace(f"{prefix}.", f"{prefix}-{i}.", 1)
                        for i in range(counts[prefix])
                    ]
                else:
                    checks.append(check)
                if len(checks) > MAX_CHECKS:
                    raise SimError(
                        shown, f"{key}.checks", f"more than {MAX_CHECKS} checks (count copies them)"
                    )
            step = dataclasses.replace(step, checks=checks)
        add(step, key)
    return out_steps, out_keys
