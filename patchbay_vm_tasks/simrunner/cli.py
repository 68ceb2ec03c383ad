"""The builtin runner's command line, as the Rust runner's (RUNNER-FACTS section 7).

    run [--work-dir DIR] [--binary NAME:MODE:VALUE]... [-v] [--timeout DUR] [--jobs N] SIM_OR_DIR...
    inspect SIM           build the lab, print exports, keep it up until interrupted
    run-in NODE -- CMD    run CMD in a node of the running inspect lab

Exit codes: 0 all passed, 1 a sim failed, 2 unusable input, 130 interrupted (after
cleaning up). Interrupted means SIGINT/SIGTERM/SIGHUP, or with --watch-stdin the end of
stdin: over SSH without a pty the host going away closes our stdin and sends no signal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..simcore import model
from ..simcore.durations import parse_duration
from ..simcore.limits import NAME_RE, shorten
from ..simcore.steps import parse_binary_override, resolve_binaries
from ..simcore.tomlfiles import is_file
from . import execute, output, parallel

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Console:
    """stdout lines from several threads; a vanished stdout counts as an interruption."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                self.cancel.set()


def err(line: str) -> None:
    with suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def stdin_is_watchable() -> bool:
    """True when stdin is a pipe, socket or file whose end means the host went away."""
    try:
        st = os.fstat(0)
    except OSError:
        return False
    if os.isatty(0):
        return False
    if stat.S_ISCHR(st.st_mode):
        try:
            if st.st_rdev == os.stat(os.devnull).st_rdev:
                return False
        except OSError:
            pass
    return True


def watch_stdin(on_eof: Callable[[], None]) -> None:
    def loop() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        on_eof()

    threading.Thread(target=loop, name="stdin-watch", daemon=True).start()


@contextmanager
def interruptions(cancel: threading.Event, stdin: bool) -> Iterator[list[str]]:
    """Turn SIGINT/SIGTERM/SIGHUP (and stdin EOF) into `cancel`; yields the reasons seen."""
    reasons: list[str] = []
    # The handler only writes to a pipe and a thread sets `cancel`: Event.set() in the
    # handler would dead-lock when the signal lands while the main thread holds the
    # event's lock inside cancel.wait().
    wake_r, wake_w = os.pipe()

    def handler(signum: int, _frame: object) -> None:
        reasons.append(signal.Signals(signum).name)
        with suppress(OSError):
            os.write(wake_w, b"!")

    def relay() -> None:
        with suppress(OSError):
            if os.read(wake_r, 1):  # b"" once the pipe is closed: no signal came
                cancel.set()
        os.close(wake_r)

    old = {}
    if threading.current_thread() is threading.main_thread():
        threading.Thread(target=relay, name="signal-relay", daemon=True).start()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    else:
        os.close(wake_r)
    if stdin and stdin_is_watchable():

        def on_eof() -> None:
            reasons.append("stdin closed")
            cancel.set()

        watch_stdin(on_eof)
    try:
        yield reasons
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        os.close(wake_w)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched for *.toml; sorted and de-duplicated. A name the
    system refuses (too long) or something that is neither a file nor a folder (a FIFO, a
    device) is a ValueError, as a missing path is."""
    found: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        shown = raw if len(raw) <= 80 and raw.isprintable() else shorten(repr(raw))
        try:
            st = p.stat()
            if stat.S_ISREG(st.st_mode):
                found.add(p)
            elif stat.S_ISDIR(st.st_mode):
                found.update(q for q in p.rglob("*.toml") if is_file(q))
            else:
                raise ValueError(f"sim input is not a file or a folder: {shown}")
        except FileNotFoundError:
            raise ValueError(f"sim input path does not exist: {shown}") from None
        except (OSError, RuntimeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ValueError(f"sim input path {shown}: {why}") from None
    if not found:
        raise ValueError("no sim files found")
    return sorted(found)


def load(path: Path, binary_names: tuple[str, ...] = ()) -> model.Sim:
    """A sim as a run reads it: unknown keys are warnings; `--binary` names may supply a
    `${binary.X}` that no `[[binary]]` entry declares."""
    from ..simcore.reader import load_sim

    return load_sim(str(path), strict=False, extra_binaries=binary_names)


# --- run ----------------------------------------------------------------------------------------

MAX_JOBS = 64


def jobs_count(value: str) -> int:
    """`--jobs N`: 1 to MAX_JOBS, plain ASCII digits."""
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_JOBS}, got {value!r}")
    return int(value)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        paths = expand_inputs(args.sims)
        timeout = parse_duration(args.timeout) if args.timeout else 600.0
        overrides = [parse_binary_override(b) for b in args.binary]
        sims = [load(p, tuple(o.name for o in overrides)) for p in paths]
    except (ValueError, model.SimError) as e:
        err(f"error: {e}")
        return EXIT_USAGE
    cancel = threading.Event()
    console = Console(cancel)
    for sim in sims:
        for w in sim.warnings:
            console.say(f"warning: {w}")

    with interruptions(cancel, args.watch_stdin) as reasons:
        run = output.RunFolder.create(Path(args.work_dir), [s.name for s in sims])
        schedule = parallel.Schedule([s.name for s in sims], args.jobs)
        run.concurrency = schedule.manifest
        console.say(f"run folder {run.root}")
        if args.jobs > 1:
            console.say(f"running up to {min(args.jobs, len(sims))} sims at once (--jobs)")
        failed: dict[int, str] = {}

        def run_one(i: int) -> None:
            sim = sims[i]
            binaries, missing = resolve_binaries(sim.binaries, overrides)
            opts = execute.Options(
                binaries=binaries,
                missing_binaries=missing,
                timeout=timeout,
                verbose=args.verbose,
                cancel=cancel,
                say=console.say,
                sim_json_extra=lambda: {"concurrency": schedule.sim_json(i)},
            )
            sim_dir = output.create_unique_dir(run.root, output.sanitize(sim.name))
            schedule.start(i)
            run.sim_started(i)
            console.say(f"[{sim.name}] start {sim.path}")
            try:
                res = execute.run_sim(sim, sim_dir, opts)
            finally:
                schedule.end(i)
            message = res.failure.message if res.failure else None
            run.sim_ended(i, sim_dir, res.ok, res.runtime_ms, message, res.records)
            console.say(
                f"[{sim.name}] {'ok' if res.ok else 'FAILED'} {res.runtime_ms / 1000:.2f}s"
                + (f": {message}" if message else "")
            )
            if not res.ok:
                failed[i] = f"- {sim.name} ({sim_dir.name}): {message}"

        parallel.run_pool(len(sims), args.jobs, run_one, cancel)
        interrupted = cancel.is_set()
        run.finish(interrupted=interrupted)
    manifest = run.root / "manifest.json"
    if interrupted:
        why = ", ".join(dict.fromkeys(reasons)) or "stdout closed"
        err(f"interrupted ({why}): processes and namespaces cleaned up; see {manifest}")
        return EXIT_INTERRUPTED
    if failed:
        lines = [failed[i] for i in sorted(failed)]
        err("one or more simulations failed:\n" + "\n".join(lines) + f"\nsee {manifest}")
        return EXIT_FAILED
    return EXIT_OK


# --- inspect / run-in -----------------------------------------------------------------------------


def env_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


_EXPORT_NAME_RE = re.compile(r"NETSIM_[A-Z0-9_]+")


def export_lines(env: dict[str, str], namespaces: dict[str, str]) -> list[str]:
    """`export NAME=VALUE` lines for a shell to source: NETSIM_IP_* from the lab and a
    NETSIM_NS_<NODE> per node. The reader only lets through names of NAME_RE, so the
    variable names are safe; values are quoted all the same, and anything else is
    refused rather than written (a sourced file runs what it holds)."""
    pairs = sorted(env.items())
    for node, ns in sorted(namespaces.items()):
        if not NAME_RE.fullmatch(node):
            raise ValueError(f"node name {shorten(repr(node))} is not fit for a shell")
        pairs.append((f"NETSIM_NS_{env_key(node)}", ns))
    lines = []
    for key, value in pairs:
        if not _EXPORT_NAME_RE.fullmatch(key):
            raise ValueError(f"variable name {shorten(repr(key))} is not fit for a shell")
        lines.append(f"export {key}={shlex.quote(value)}")
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        sim = load(Path(args.sim))
    except (ValueError, model.SimError) as e:
        err(f"error: {e}")
        return EXIT_USAGE
    from .lab import Lab

    cancel = threading.Event()
    console = Console(cancel)
    inspect_dir = Path(args.work_dir) / "inspect"
    inspect_dir.mkdir(parents=True, exist_ok=True)
    base = inspect_dir / output.sanitize(sim.name)
    env_file, json_file = base.with_suffix(".env"), base.with_suffix(".json")
    # stdin closing ends inspect whenever it can be watched: the host keeps it open.
    with interruptions(cancel, True):
        lab = Lab(sim.topology, "pbi" + os.urandom(2).hex(), lambda kind, fields: None)
        try:
            try:
                lab.build()
            except Exception as e:  # noqa: BLE001 (LabError, OSError)
                err(f"error: building the lab: {e}")
                return EXIT_FAILED
            state = lab.state()
            nodes: dict[str, dict] = {}
            for group in ("routers", "devices"):
                for name, node in state.get(group, {}).items():
                    try:
                        argv = lab.netns_argv(name)
                    except Exception:  # noqa: BLE001 (a router: fall back to ip netns exec)
                        argv = ["ip", "netns", "exec", node["ns"]]
                    nodes[name] = {"ns": node["ns"], "argv": argv}
            try:
                lines = export_lines(lab.env, {n: v["ns"] for n, v in nodes.items()})
            except ValueError as e:
                err(f"error: {e}")
                return EXIT_USAGE
            output.write_text(env_file, "\n".join(lines) + "\n")
            output.write_json(
                json_file,
                {"sim": sim.name, "pid": os.getpid(), "env_file": str(env_file), "nodes": nodes},
            )
            for line in lines:
                console.say(line)
            console.say(f"# lab up: {json_file}; Ctrl-C (or close stdin) to tear it down")
            while not cancel.wait(0.5):
                pass
        finally:
            lab.teardown()
            for f in (env_file, json_file):
                with suppress(FileNotFoundError):
                    f.unlink()
    return EXIT_OK


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_forwarding_signals(argv: list[str]) -> int:
    """Run argv; SIGINT/SIGTERM/SIGHUP go to it (the host's Ctrl-C reaches us, the
    runner, not the command in the node), and its exit code comes back."""
    # The handlers come first: a Ctrl-C that arrives while the command starts is
    # kept and sent once it exists, not lost to Python's default handler.
    child: list[subprocess.Popen] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not child:
            pending.append(signum)
            return
        with suppress(ProcessLookupError):
            os.kill(child[0].pid, signum)

    old = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        child.append(subprocess.Popen(argv))
        for signum in pending:
            forward(signum, None)
        return child[0].wait()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def cmd_run_in(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        err("error: run-in: no command given (run-in NODE -- CMD...)")
        return EXIT_USAGE
    found = sorted(
        (Path(args.work_dir) / "inspect").glob("*.json"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for f in found:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        node = data.get("nodes", {}).get(args.node)
        if node and pid_alive(int(data.get("pid", 0))):
            rc = run_forwarding_signals(node["argv"] + cmd)
            return rc if rc >= 0 else 128 - rc
    err(f"error: run-in: no running inspect lab has a node '{args.node}' (start `inspect` first)")
    return EXIT_USAGE


# --- main -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchbay", description="builtin patchbay sim runner")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run sims")
    r.add_argument("sims", nargs="+", metavar="SIM_OR_DIR")
    r.add_argument("--work-dir", default=".patchbay-work")
    r.add_argument("--binary", action="append", default=[], metavar="NAME:MODE:VALUE")
    r.add_argument("-v", "--verbose", action="store_true", help="stream node output")
    r.add_argument("--timeout", metavar="DUR", help="per sim (default 10m)")
    r.add_argument(
        "--jobs",
        type=jobs_count,
        default=1,
        metavar="N",
        help="run up to N sims at once, each in its own lab (default 1); sim.json and the "
        "manifest say which ran side by side",
    )
    r.add_argument(
        "--watch-stdin",
        action="store_true",
        help="treat the end of stdin as an interruption (the host's SSH client went away)",
    )
    # Accepted for command-line compatibility; building and serving are the host's job.
    r.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--project-root", help=argparse.SUPPRESS)
    r.add_argument("--open", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--bind", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="build a sim's lab and keep it up")
    i.add_argument("sim", metavar="SIM")
    i.add_argument("--work-dir", default=".patchbay-work")
    i.set_defaults(func=cmd_inspect)

    n = sub.add_parser("run-in", help="run a command in a node of the inspect lab")
    n.add_argument("node", metavar="NODE")
    n.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    n.add_argument("--work-dir", default=".patchbay-work")
    n.set_defaults(func=cmd_run_in)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
