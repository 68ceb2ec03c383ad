"""One step table, after templates and groups, typed into `model.Step`: its action,
the fields that action takes, captures, results and assert checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import model, steps
from .conditions import read_condition
from .format_keys import (
    ACTION_ALIASES,
    ACTION_KEYS,
    CAPTURE_KEYS,
    COMMON_STEP_KEYS,
    DEVICE_ACTIONS,
    RESULT_KEYS,
    STEP_KEYS,
)
from .limits import check_name, shorten
from .tables import TableReader, did_you_mean, join_key, type_name

SimError = model.SimError
A = model.Action

WAIT_FOR_TIMEOUT_S = 300.0


@dataclass
class RawStep:
    """One step table after templates and groups, before it is typed."""

    table: dict[str, Any]
    key: str  # for messages: "step[3]"
    origin: str  # "sims/x.toml step[3] (use = transfer-provider)"
    template: bool  # came through a template: `.cap` in results means `<id>.cap`


def split_check(check: str) -> tuple[str, str, str] | None:
    """(lhs, op, rhs) of an assert check, searching the operators in the runner's order;
    None without one. The runner's own parser, so that both split a check alike."""
    try:
        parsed = steps.parse_check(check)
    except steps.StepError:
        return None
    return parsed.lhs, parsed.op, parsed.rhs


def make_step(tr: TableReader, raw: RawStep, shown: str) -> model.Step:
    """The typed step of one step table; `shown` is the sim file as messages name it."""
    t, key = raw.table, raw.key
    action_text = t.get("action", t.get("kind"))
    if action_text is None:
        if "cmd" not in t:
            raise SimError(shown, f"{key}.action", 'missing; add action = "run" (or another)')
        action_text = "run"
    if not isinstance(action_text, str):
        field = "action" if "action" in t else "kind"
        raise SimError(
            shown, f"{key}.{field}", f'must be a string such as "run", got {type_name(action_text)}'
        )
    action_text = ACTION_ALIASES.get(action_text, action_text)
    try:
        action = model.Action(action_text)
    except ValueError:
        names = [a.value for a in model.Action] + list(ACTION_ALIASES)
        raise SimError(
            shown,
            f"{key}.action",
            f"unknown action {shorten(repr(action_text))}; use one of {', '.join(names)}"
            + did_you_mean(action_text, frozenset(names)),
        ) from None
    allowed = COMMON_STEP_KEYS | ACTION_KEYS[action]
    for k in t:
        if k not in allowed and k in STEP_KEYS:
            tr.unknown(shown, f"{key}.{k}", f"{k!r} does not apply to a {action.value} step")
    step = model.Step(index=0, action=action, origin=raw.origin)
    step.id = tr.opt_string(t, "id", shown, key)
    if step.id is not None:
        # It names the step's log files, its certs/ or files/ folder, its captures.
        check_name(step.id, shown, f"{key}.id", "step id")
    step.device = tr.opt_string(t, "device", shown, key)
    step.env = tr.string_table(t.get("env", {}), shown, f"{key}.env")
    step.requires = tr.strings(t.get("requires", []), shown, f"{key}.requires")
    if "timeout" in t:
        step.timeout = tr.duration(t["timeout"], shown, f"{key}.timeout")
    elif action is A.WAIT_FOR:
        step.timeout = WAIT_FOR_TIMEOUT_S

    def need(name: str) -> Any:
        if name not in t:
            raise SimError(shown, f"{key}.{name}", f"missing: a {action.value} step needs it")
        return t[name]

    if action in (A.RUN, A.SPAWN):
        step.cmd = tr.strings(need("cmd"), shown, f"{key}.cmd")
        if not raw.template and "args" in t:
            step.cmd += tr.strings(t["args"], shown, f"{key}.args")
        if not step.cmd:
            raise SimError(shown, f"{key}.cmd", "is empty; give the program and its arguments")
        parser = t.get("parser", "text")
        try:
            step.parser = model.Parser(parser)
        except (ValueError, TypeError):
            raise SimError(
                shown,
                f"{key}.parser",
                f"unknown parser {shorten(repr(parser))}; use text, ndjson or json",
            ) from None
        caps = tr.table(t.get("captures", {}), shown, f"{key}.captures")
        step.captures = {
            n: _capture(tr, n, c, shown, f"{key}.captures.{n}") for n, c in caps.items()
        }
        step.results = _results(tr, t.get("results", {}), shown, f"{key}.results")
        if "ready_after" in t:
            step.ready_after = tr.duration(t["ready_after"], shown, f"{key}.ready_after")
    if action in (A.SPAWN, A.WAIT_FOR, A.GEN_CERTS, A.GEN_FILE) and not step.id:
        raise SimError(shown, f"{key}.id", f"missing: a {action.value} step needs an id")
    if action in DEVICE_ACTIONS and not step.device:
        raise SimError(shown, f"{key}.device", f"missing: a {action.value} step needs a device")
    if action is A.WAIT:
        step.duration = tr.duration(need("duration"), shown, f"{key}.duration")
    elif action is A.SET_LINK_CONDITION:
        step.interface = tr.opt_string(t, "interface", shown, key)
        cond = t.get("condition", t.get("impair"))
        ckey = f"{key}.{'condition' if 'condition' in t else 'impair'}"
        step.condition = None if cond is None else read_condition(tr, cond, shown, ckey)
    elif action in (A.LINK_DOWN, A.LINK_UP):
        step.interface = tr.string(need("interface"), shown, f"{key}.interface")
    elif action is A.SET_DEFAULT_ROUTE:
        step.to = tr.string(need("to"), shown, f"{key}.to")
    elif action is A.GEN_CERTS:
        step.cn = tr.opt_string(t, "cn", shown, key) or "patchbay"
        step.san = tr.strings(t.get("san", []), shown, f"{key}.san")
    elif action is A.GEN_FILE:
        step.content = tr.string(need("content"), shown, f"{key}.content")
    elif action is A.ASSERT:
        checks = []
        if "check" in t:
            checks.append(tr.string(t["check"], shown, f"{key}.check"))
        checks += tr.strings(t.get("checks", []), shown, f"{key}.checks")
        if not checks:
            raise SimError(shown, f"{key}.checks", "missing: an assert step needs check(s)")
        for c in checks:
            if split_check(c) is None:
                raise SimError(
                    shown,
                    f"{key}.checks",
                    f"{c!r} has no operator; write 'step.capture OP value' with OP one of "
                    "==, !=, contains, matches, >=",
                )
        step.checks = checks
    if raw.template:
        # In a template's results, `.cap` means `<id>.cap` (the runner's shorthand).
        step.results = {
            k: f"{step.key}{v}" if v.startswith(".") and "." not in v[1:] else v
            for k, v in step.results.items()
        }
    return step


def _capture(tr: TableReader, name: str, value: Any, path: str, key: str) -> model.Capture:
    table = tr.table(value, path, key)
    tr.check_keys(table, CAPTURE_KEYS, path, key, "a capture")
    pipe = table.get("pipe", "stdout")
    if not isinstance(pipe, str) or pipe not in ("stdout", "stderr"):
        raise SimError(path, f"{key}.pipe", f"must be stdout or stderr, got {shorten(repr(pipe))}")
    regex = tr.opt_string(table, "regex", path, key)
    if regex is not None:
        try:
            re.compile(regex)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            # OverflowError: a{99999999999}; RecursionError: thousands of nested groups.
            why = str(exc) if isinstance(exc, re.error | OverflowError) else "nested too deep"
            raise SimError(
                path, f"{key}.regex", f"bad regex {shorten(repr(regex))}: {why}"
            ) from None
    match = None
    if "match" in table:
        match = dict(tr.table(table["match"], path, f"{key}.match"))
    return model.Capture(
        name=name,
        pipe=pipe,
        regex=regex,
        match=match,
        pick=tr.opt_string(table, "pick", path, key),
    )


def _results(tr: TableReader, value: Any, path: str, key: str) -> dict[str, str]:
    table = tr.table(value, path, key)
    tr.check_keys(table, RESULT_KEYS, path, key, "[step.results]")
    return {k: tr.string(v, path, join_key(key, k)) for k, v in table.items() if k in RESULT_KEYS}
