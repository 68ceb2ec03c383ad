"""`sim.serve` and `sim.report`: look at results in a browser, live or as one HTML file.

Registered in the `sim` collection; `sim.run --open` uses the same viewer.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context

from .. import settings
from ..errors import UsageError
from ..ui import say
from ..viewer import DEFAULT_BIND
from .common import task, task_errors

if TYPE_CHECKING:
    from ..viewer.server import ViewerServer

# The server and report modules load when a viewer task runs, not with every task.


def start_viewer(
    work_dir: Path,
    bind: str,
    open_browser: bool,
    *,
    serving_only: bool = False,
    testdir: bool = False,
) -> ViewerServer:
    """A running viewer in a background thread (also for `sim.run --open`, where it shows
    the run as it goes; serving_only: `sim.serve`, where serving is all there is;
    testdir: the labs of Rust tests, viewer/testdir.py)."""
    from ..viewer import server as server_mod

    try:
        srv = server_mod.serve_in_thread(work_dir, bind, testdir=testdir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot listen on {bind}: {e.strerror or e}") from None
    then = "Ctrl-C stops it" if serving_only else "it shows the run as it goes"
    say(f"viewer on {srv.url} over {work_dir}; {then}")
    if srv.hosts.network:
        urls = srv.hosts.urls()
        where = ", ".join(urls) if urls else "(no address but loopback yet)"
        say(f"the runs in {work_dir} are now visible to the network, no login asked: {where}")
    if open_browser:
        webbrowser.open(srv.url)
    return srv


def serve_until_interrupted(
    srv: ViewerServer, interrupted: bool = False, *, say_still: bool = True, note: str = ""
) -> None:
    """Keep serving until Ctrl-C (at once when the run before was interrupted), then stop.
    say_still: say that it is still serving (after a run; not right after starting it);
    note: a line to say first (where a Ctrl-C is already a clean stop)."""
    try:
        if note:
            say(note)
        if not interrupted:
            if say_still:
                say(f"still serving {srv.url}; Ctrl-C stops it")
            srv.stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()
        srv.server_close()


def check_work_dir(work_dir: Path, given: str | None) -> str | None:
    """Exit 2 for a work dir given by the user that is not there (a typo, most likely: a
    viewer over nothing would show an empty page forever) or is not a folder. The default
    (or configured) one not there yet is normal before a first run: a note to say."""
    if work_dir.exists() and not work_dir.is_dir():
        raise UsageError(f"work dir {work_dir}: not a folder")
    if work_dir.exists():
        return None
    if given is not None:
        raise UsageError(
            f"--work-dir {given}: no such folder (give the work dir of a sim.run; "
            "without --work-dir the default one is served)"
        )
    return f"{work_dir} does not exist yet: runs appear on the page as sim.run writes them there"


@task(
    help={
        "work_dir": "The work dir to show (default .patchbay-work).",
        "bind": "HOST:PORT to listen on (default 127.0.0.1:7421: only this host; "
        "0.0.0.0:PORT: the network too).",
        "open": "Open the page in the default browser.",
        "testdir": "Show the labs that Rust tests wrote (test.run; patchbay's testdir!()) in "
        "<work dir>/binaries/tests/testdir-current instead of sim runs, the newest as "
        "each test.run makes it.",
        "accept_push": "Be a results server that takes pushed runs (POST /api/push/PROJECT, "
        "patchbay-serve's API; sim.push sends them) into --data-dir; needs --api-key.",
        "api_key": "The key pushes must send (Authorization: Bearer KEY); better in "
        "PATCHBAY_API_KEY (a flag shows in `ps`). At least 16 characters.",
        "data_dir": "The results server's folder (runs and index; default under your data "
        "dir, e.g. ~/.local/share/patchbay/results). Without --accept-push: served read only.",
        "retention": "With --accept-push: delete the oldest runs once all of them take more "
        "than SIZE (e.g. 10GB, 500MB, 2GiB); a run being read is kept until let go.",
        "max_push": "Results server: the largest push taken, packed (default 256MB).",
    },
)
def serve(
    c: Context,
    work_dir: str | None = None,
    bind: str = DEFAULT_BIND,
    open: bool = False,
    testdir: bool = False,
    accept_push: bool = False,
    api_key: str | None = None,
    data_dir: str | None = None,
    retention: str | None = None,
    max_push: str | None = None,
) -> None:
    """Serve the results viewer over the work dir until Ctrl-C.

    With --accept-push (or --data-dir): a results server for a team instead, which CI
    pushes runs to (sim.push, or patchbay's curl snippet) and which compares each with
    its base branch; see --api-key, --data-dir, --retention."""
    with task_errors():
        if accept_push or data_dir or api_key or retention or max_push:
            from .push import serve_results

            if work_dir is not None or testdir:
                raise UsageError(
                    "a results server (--accept-push, --data-dir) serves its data dir: "
                    "--work-dir and --testdir are for the viewer of a work dir"
                )
            serve_results(
                bind=bind,
                open_browser=open,
                accept_push=accept_push,
                api_key=api_key,
                data_dir=data_dir,
                retention=retention,
                max_push=max_push,
            )
            return
        s = settings.from_context(c, work_dir=work_dir)
        note = check_work_dir(s.work_dir, work_dir)
        if testdir:
            from ..viewer import testdir as testdir_mod

            note = testdir_mod.describe(s.work_dir)
        srv = start_viewer(s.work_dir, bind, open, serving_only=True, testdir=testdir)
        serve_until_interrupted(srv, say_still=False, note=note or "")


@task(
    help={
        "work_dir": "The work dir holding the invocation (default .patchbay-work).",
        "invocation": "sim-YYMMDD-HHMMSS folder, or latest (default).",
        "output": "The HTML file to write.",
        "baseline": "A run to compare the invocation with, in the report's compare view: a "
        "run folder (anywhere: a CI artifact), a work dir, or a sim-YYMMDD-HHMMSS of the "
        "work dir (as sim.compare --base).",
    },
)
def report(
    c: Context,
    output: str | None = None,
    work_dir: str | None = None,
    invocation: str = "latest",
    baseline: str | None = None,
) -> None:
    """Write one self-contained HTML report of an invocation (no server needed to view it)."""
    from ..viewer import report as report_mod

    with task_errors():
        if not output:
            raise UsageError("give the file to write: sim.report -o report.html")
        s = settings.from_context(c, work_dir=work_dir)
        base = None
        if baseline is not None:
            from ..sim import rundata

            base = rundata.resolve_group(baseline, s.work_dir, "--baseline")
        try:
            out = report_mod.write_report(s.work_dir, Path(output), invocation, base)
        except report_mod.ReportError as e:
            raise UsageError(str(e)) from None
        except OSError as e:  # a folder, no permission, no space, a name too long
            raise UsageError(
                f"--output {output}: cannot write the report there: {e.strerror or e}"
            ) from None
        except ValueError as e:  # a NUL in the name
            raise UsageError(f"--output {output!r}: {e}") from None
        say(f"report written to {out} ({out.stat().st_size} bytes)")
