"""Run one sim in a fresh lab: its steps one after another (RUNNER-FACTS section 4).

Every process a step starts gets its own process group; whatever happens (failure,
timeout, interruption) all of them are killed and the lab torn down before `run_sim`
returns. The real error is kept for sim.json: phase, message and the failing step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from ..simcore import model
from ..simcore.steps import (
    CaptureStore,
    Interrupted,
    StepError,
    Vars,
    capture_from_line,
    collect_result,
    evaluate_check,
    interpolate,
    interpolate_args,
    json_document_values,
)
from . import output

DEFAULT_WAIT_S = 300.0  # wait-for timeout, and how long `requires`/captures are awaited
PUMP_GRACE_S = 5.0  # after exit, how long output pipes may stay open (a leftover child)

Say = Callable[[str], None]


@dataclass
class Failure:
    """sim.json `error`: phase (configure-lab | step | interrupted), message, step."""

    phase: str
    message: str
    step: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "message": self.message, "step": self.step}


@dataclass
class Options:
    binaries: dict[str, str] = field(default_factory=dict)
    missing_binaries: dict[str, str] = field(default_factory=dict)  # name -> why not
    timeout: float = 600.0  # per sim (`--timeout`)
    verbose: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    say: Say = print
    lab_factory: Callable[..., Any] | None = None  # Lab(topology, prefix, emit); tests fake it
    # More sim.json fields, asked for as the sim ends (`run --jobs`: which sims ran beside it).
    sim_json_extra: Callable[[], dict[str, Any]] | None = None


@dataclass
class SimResult:
    sim_dir: Path
    ok: bool
    failure: Failure | None
    records: list[dict[str, Any]]
    runtime_ms: int


@dataclass
class Proc:
    """A started step process and the threads copying its output."""

    step: model.Step
    device: str
    popen: subprocess.Popen
    started: float
    logs: dict[str, Path]
    files: dict[str, TextIO] = field(default_factory=dict)  # the open logs, pumps close them
    pumps: list[threading.Thread] = field(default_factory=list)
    lines: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    finished: bool = False


def step_info(step: model.Step) -> dict[str, Any]:
    return {
        "index": step.index,
        "action": step.action.value,
        "id": step.id,
        "device": step.device,
    }


def setup_summary(sim: model.Sim) -> dict[str, Any]:
    """sim.json `setup`. Regions are applied by our lab (the Rust runner ignores them)."""
    regions = sim.topology.regions
    return {
        "sim_path": sim.path,
        "topology_ref": sim.topology_ref,
        "topology_mode": sim.topology_mode,
        "routers": len(sim.topology.routers),
        "devices": len(sim.topology.devices),
        "regions": len(regions),
        "regions_applied": bool(regions),
        "steps": len(sim.steps),
    }


def kill_group(popen: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


class SimRun:
    """The state of one sim while its steps run."""

    def __init__(self, sim: model.Sim, sim_dir: Path, opts: Options) -> None:
        self.sim = sim
        self.sim_dir = sim_dir
        self.opts = opts
        self.store = CaptureStore()
        self.procs: dict[str, Proc] = {}  # spawned, by id
        self.all_procs: list[Proc] = []
        self.done_keys: set[str] = set()  # keys of steps that ran to completion
        self.records: list[dict[str, Any]] = []
        self.prefix = "pb" + os.urandom(3).hex()
        self.deadline = time.monotonic() + opts.timeout
        self.created_at = output.timestamp()
        self.events = output.EventLog(sim_dir / "events.jsonl")
        self.lab: Any = None
        self.devices = {d.name for d in sim.topology.devices}
        self.say_lock = threading.Lock()

    # --- helpers --------------------------------------------------------------------------

    def say(self, line: str) -> None:
        with self.say_lock:
            self.opts.say(line)

    def emit(self, kind: str, fields: dict[str, Any] | None = None) -> None:
        fields = dict(fields or {})
        if kind == "lab_created":
            fields["lab_prefix"] = fields.get("lab_prefix") or self.prefix
            fields["label"] = fields.get("label") or self.sim.name
        self.events.emit(kind, fields)

    def write_state(self, status: str) -> None:
        lab_state: dict[str, Any] = {
            "ix": None,
            "routers": {},
            "devices": {},
            "regions": {},
            "region_links": [],
        }
        if self.lab is not None:
            # Before the build, or half built: keep the skeleton.
            with contextlib.suppress(Exception):
                lab_state.update(self.lab.state())
        data = {
            "opid": self.events.opid,
            "lab_prefix": self.prefix,
            "label": self.sim.name,
            "status": status,
            "created_at": self.created_at,
            **lab_state,
        }
        output.write_json(self.sim_dir / "state.json", data)

    def check_cancel(self) -> None:
        if self.opts.cancel.is_set():
            raise Interrupted("interrupted")

    def until(self, seconds: float | None) -> float:
        """A wait limit: now + seconds, capped by the sim deadline."""
        if seconds is None:
            return self.deadline
        return min(time.monotonic() + seconds, self.deadline)

    def past_deadline_message(self) -> str:
        return f"sim timeout of {self.opts.timeout:g}s reached (--timeout)"

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake for an interruption; fail when it would outlast the sim deadline."""
        end = time.monotonic() + seconds
        while True:
            self.check_cancel()
            left = end - time.monotonic()
            if left <= 0:
                return
            if time.monotonic() >= self.deadline:
                raise StepError(self.past_deadline_message())
            self.opts.cancel.wait(min(left, 0.2, max(self.deadline - time.monotonic(), 0.01)))

    def wait_capture(self, key: str) -> str:
        limit = self.until(DEFAULT_WAIT_S)
        return self.store.wait(
            key,
            limit,
            self.opts.cancel.is_set,
            what=f"no value for capture '{key}' after waiting "
            f"{'until the sim timeout' if limit >= self.deadline else f'{DEFAULT_WAIT_S:g}s'}",
        )

    def vars(self) -> Vars:
        env = self.lab.env if self.lab is not None else {}
        return Vars(env, self.opts.binaries, self.wait_capture, self.opts.missing_binaries)

    def device_of(self, step: model.Step) -> str:
        if not step.device:
            raise StepError(f"{step.action.value}: no device")
        if step.device not in self.devices:
            raise StepError(f"{step.action.value}: '{step.device}' is not a device of the topology")
        return step.device

    # --- processes ------------------------------------------------------------------------

    def start(self, step: model.Step) -> Proc:
        dev = self.device_of(step)
        v = self.vars()
        argv = interpolate_args(step.cmd, v)
        if not argv:
            raise StepError(f"{step.action.value}: empty cmd")
        env = dict(os.environ)
        env.update(self.lab.env)
        if os.environ.get("NETSIM_RUST_LOG"):
            env["RUST_LOG"] = os.environ["NETSIM_RUST_LOG"]
        for k, val in step.env.items():
            env[k] = interpolate(val, v)
        logs, files = self.open_logs(dev, step)
        try:
            popen = subprocess.Popen(
                self.lab.netns_argv(dev) + argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: killed as a whole at the end
            )
        except (OSError, ValueError) as e:  # ValueError: a NUL in an argument or the env
            for f in files.values():
                f.close()
            raise StepError(f"cannot start {argv[0]!r} on '{dev}': {e}") from None
        proc = Proc(step, dev, popen, time.monotonic(), logs, files=files)
        self.all_procs.append(proc)
        for pipe, stream in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            t = threading.Thread(target=self.pump, args=(proc, pipe, stream), daemon=True)
            t.start()
            proc.pumps.append(t)
        return proc

    def open_logs(self, dev: str, step: model.Step) -> tuple[dict[str, Path], dict[str, TextIO]]:
        """The step's two log files, opened before its process starts: a log that cannot
        be made fails the step instead of losing its output while the sim reports ok.
        Device names and step ids are checked by the reader (simcore.limits); one that
        would reach outside the sim's folder is refused here too."""
        base = f"device.{dev}.{step.key}"
        if "/" in base or "\0" in base or base.startswith("."):
            raise StepError(f"cannot name the logs of step {step.key!r} on {dev!r}: {base!r}")
        logs = {pipe: self.sim_dir / f"{base}.{pipe}.log" for pipe in ("stdout", "stderr")}
        files: dict[str, TextIO] = {}
        try:
            for pipe, path in logs.items():
                files[pipe] = path.open("a", buffering=1)
        except OSError as e:
            for f in files.values():
                f.close()
            raise StepError(f"cannot create the log {e.filename}: {e.strerror or e}") from None
        return logs, files

    def pump(self, proc: Proc, pipe: str, stream: BinaryIO) -> None:
        """Copy one pipe to its log line by line; feed live captures; echo with -v."""
        step = proc.step
        live = step.parser is not model.Parser.JSON
        caps = [(n, c) for n, c in step.captures.items() if c.pipe == pipe]
        prefix = f"{proc.device[:10]:<10}{pipe[3:]}: "
        with proc.files[pipe] as log:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(line + "\n")
                if self.opts.verbose:
                    self.say(prefix + line)
                if not live:
                    proc.lines[pipe].append(line)
                    continue
                for name, cap in caps:
                    try:
                        value = capture_from_line(line, cap, step.parser)
                    except Exception:  # noqa: BLE001 (a bad regex must not kill the pump)
                        value = None
                    if value is not None:
                        self.store.record(f"{step.key}.{name}", value)
        stream.close()

    def wait_exit(self, proc: Proc, until: float) -> int | None:
        """The exit code, or None when `until` passes first. Interruptible."""
        while True:
            rc = proc.popen.poll()
            if rc is not None:
                return rc
            self.check_cancel()
            left = until - time.monotonic()
            if left <= 0:
                return None
            self.opts.cancel.wait(min(left, 0.05))

    def finish(self, proc: Proc) -> None:
        """After exit: let the pumps drain, then take json captures and results."""
        end = time.monotonic() + PUMP_GRACE_S
        for t in proc.pumps:
            t.join(max(end - time.monotonic(), 0))
        if any(t.is_alive() for t in proc.pumps):
            # A child of the process still holds the pipes: it goes with its group.
            kill_group(proc.popen)
            for t in proc.pumps:
                t.join(2)
        proc.finished = True
        step = proc.step
        if step.parser is model.Parser.JSON and step.captures:
            for name, value in json_document_values(proc.lines, step.captures).items():
                self.store.record(f"{step.key}.{name}", value)

    def collect_results(self, step: model.Step) -> None:
        if not step.results:
            return
        record = collect_result(step.key, step.results, self.store.get)
        if record is not None:
            self.records.append(record)

    def exit_message(self, proc: Proc, rc: int) -> str:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        what = f"'{proc.step.action.value}'"
        if proc.step.id:
            what += f" '{proc.step.id}'"
        return f"{what} on '{proc.device}' {how} (see {proc.logs['stderr']})"

    # --- actions --------------------------------------------------------------------------

    def do_run(self, step: model.Step) -> None:
        proc = self.start(step)
        rc = self.wait_exit(proc, self.until(step.timeout))
        if rc is None:
            kill_group(proc.popen)
            proc.popen.wait()
            self.finish(proc)
            if step.timeout is not None and time.monotonic() < self.deadline:
                raise StepError(f"'run' on '{proc.device}' timed out after {step.timeout:g}s")
            raise StepError(self.past_deadline_message())
        self.finish(proc)
        if rc != 0:
            raise StepError(self.exit_message(proc, rc))
        self.done_keys.add(step.key)
        self.collect_results(step)

    def do_spawn(self, step: model.Step) -> None:
        if not step.id:
            raise StepError("spawn: needs an id")
        self.procs[step.id] = self.start(step)
        if step.ready_after:
            self.sleep(step.ready_after)

    def do_wait_for(self, step: model.Step) -> None:
        sid = step.id or ""
        proc = self.procs.get(sid)
        if proc is None:
            if sid in self.done_keys:
                return  # a run step of that id: it already completed
            raise StepError(f"wait-for '{sid}': no spawned step with this id")
        limit = step.timeout if step.timeout is not None else DEFAULT_WAIT_S
        until = self.until(limit)
        own = proc.step.timeout  # the spawn's own timeout bounds its lifetime
        if own is not None:
            until = min(until, proc.started + own)
        rc = self.wait_exit(proc, until)
        if rc is None:
            now = time.monotonic()
            if own is not None and now >= proc.started + own:
                kill_group(proc.popen)
                raise StepError(f"spawn '{sid}' on '{proc.device}' timed out after {own:g}s")
            if now >= self.deadline:
                raise StepError(self.past_deadline_message())
            raise StepError(f"wait-for '{sid}' timed out after {limit:g}s")
        self.finish(proc)
        del self.procs[sid]
        self.done_keys.add(sid)
        if rc != 0:
            # The Rust runner only warns here; a failed process fails the sim.
            raise StepError(self.exit_message(proc, rc))
        self.collect_results(proc.step)

    def do_gen_certs(self, step: model.Step) -> None:
        if not step.id:
            raise StepError("gen-certs: needs an id")
        device = step.device or step.id
        if device not in self.devices:
            raise StepError(f"gen-certs: '{device}' is not a device of the topology")
        v = self.vars()
        sans = [self.lab.ip_of(device)] + [interpolate(s, v) for s in step.san]
        out_dir = (self.sim_dir / "certs" / output.sanitize(step.id)).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        cert, key = out_dir / "cert.pem", out_dir / "key.pem"
        cn = step.cn.replace("\\", "\\\\").replace("/", "\\/")
        argv = [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "3650",
            "-subj", f"/CN={cn}",
            "-addext", "subjectAltName=" + ",".join(san_entry(s) for s in sans),
        ]  # fmt: skip
        try:
            res = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StepError(f"gen-certs: openssl: {e}") from None
        if res.returncode != 0:
            raise StepError(f"gen-certs: openssl failed: {res.stderr.strip()}")
        self.store.record(f"{step.id}.cert_pem_path", str(cert))
        self.store.record(f"{step.id}.key_pem_path", str(key))

    def do_gen_file(self, step: model.Step) -> None:
        if not step.id:
            raise StepError("gen-file: needs an id")
        text = interpolate(step.content, self.vars())
        out_dir = (self.sim_dir / "files" / output.sanitize(step.id)).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "content"
        path.write_text(text)
        self.store.record(f"{step.id}.path", str(path))

    def execute(self, step: model.Step) -> None:
        a = model.Action
        if step.action is a.RUN:
            self.do_run(step)
        elif step.action is a.SPAWN:
            self.do_spawn(step)
        elif step.action is a.WAIT_FOR:
            self.do_wait_for(step)
        elif step.action is a.WAIT:
            self.sleep(step.duration)
        elif step.action is a.SET_LINK_CONDITION:
            self.lab.set_link_condition(self.device_of(step), step.interface, step.condition)
        elif step.action is a.LINK_DOWN:
            dev = self.device_of(step)
            self.lab.link_down(dev, step.interface or self.lab.current_default(dev))
        elif step.action is a.LINK_UP:
            dev = self.device_of(step)
            self.lab.link_up(dev, step.interface or self.lab.current_default(dev))
        elif step.action is a.SET_DEFAULT_ROUTE:
            if not step.to:
                raise StepError("set-default-route: needs `to`")
            self.lab.set_default_route(self.device_of(step), step.to)
        elif step.action is a.GEN_CERTS:
            self.do_gen_certs(step)
        elif step.action is a.GEN_FILE:
            self.do_gen_file(step)
        elif step.action is a.ASSERT:
            for check in step.checks:
                evaluate_check(check, self.store.get)
        else:  # pragma: no cover (the enum is closed)
            raise StepError(f"unknown action {step.action}")
        if step.action in (a.SET_LINK_CONDITION, a.LINK_DOWN, a.LINK_UP, a.SET_DEFAULT_ROUTE):
            self.write_state("running")

    def run_step(self, step: model.Step) -> None:
        self.check_cancel()
        if time.monotonic() >= self.deadline:
            raise StepError(self.past_deadline_message())
        for key in step.requires:
            self.wait_capture(key)
        self.execute(step)

    # --- the whole sim --------------------------------------------------------------------

    def run(self) -> Failure | None:
        factory = self.opts.lab_factory
        if factory is None:
            from .lab import Lab as factory  # noqa: N813 (imported late: tests fake it)
        self.write_state("running")
        try:
            try:
                self.lab = factory(self.sim.topology, self.prefix, self.emit, label=self.sim.name)
                self.lab.build()
            except Exception as e:  # noqa: BLE001 (LabError, OSError: all fail the sim)
                return Failure("configure-lab", str(e) or repr(e))
            self.write_state("running")
            for step in self.sim.steps:
                t0 = time.monotonic()
                failure = None
                try:
                    self.run_step(step)
                except Interrupted as e:
                    failure = Failure("interrupted", str(e), step_info(step))
                except Exception as e:  # noqa: BLE001 (StepError, LabError, OSError)
                    if self.opts.cancel.is_set():
                        failure = Failure("interrupted", "interrupted", step_info(step))
                    else:
                        failure = Failure("step", str(e) or repr(e), step_info(step))
                self.say(
                    f"[{self.sim.name}] step {step.index} {step.id or '-'} {step.action.value} "
                    f"{step.device or '-'} {'FAILED' if failure else 'ok'} "
                    f"{time.monotonic() - t0:.2f}s"
                )
                if failure:
                    return failure
            return None
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Kill every process group we started, then tear the lab down. Never raises."""
        # Every group, finished or not: a finished leader may have left children behind.
        live = self.all_procs
        for p in live:
            kill_group(p.popen, signal.SIGTERM)
        end = time.monotonic() + 1.0
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(end - time.monotonic(), 0))
            kill_group(p.popen)  # the rest of the group, and a leader that ignored SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)
        for p in self.all_procs:
            for t in p.pumps:
                t.join(2)
        if self.lab is not None:
            with contextlib.suppress(Exception):  # documented never to raise; be sure
                self.lab.teardown()
        try:
            self.write_state("stopped")
        finally:
            self.events.close()


def san_entry(value: str) -> str:
    """An openssl subjectAltName entry: IP when it parses as an address, else DNS."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return f"IP:{value}"
    except ValueError:
        return f"DNS:{value}"


def run_sim(sim: model.Sim, sim_dir: Path, opts: Options) -> SimResult:
    """Run one sim into `sim_dir` (created); write sim.json and, on success, results."""
    started = time.time()
    t0 = time.monotonic()
    run = SimRun(sim, sim_dir, opts)
    failure = run.run()
    ok = failure is None
    runtime_ms = int((time.monotonic() - t0) * 1000)
    if ok and run.records:
        output.write_results(sim_dir, sim.name, run.records)
    summary = {
        "sim": sim.name,
        "sim_dir": sim_dir.name,
        "status": "ok" if ok else "error",
        "started_at": output.timestamp(started),
        "ended_at": output.timestamp(),
        "runtime_ms": runtime_ms,
        "setup": setup_summary(sim),
        "logs": output.list_logs(sim_dir),
        "error": failure.as_dict() if failure else None,
    }
    if opts.sim_json_extra is not None:
        summary.update(opts.sim_json_extra())
    output.write_json(sim_dir / "sim.json", summary)
    return SimResult(sim_dir, ok, failure, run.records if ok else [], runtime_ms)
