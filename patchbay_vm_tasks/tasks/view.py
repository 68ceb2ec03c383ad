"""`sim.serve` and `sim.report`: look at results in a browser, live or as one HTML file.

Registered in the `sim` collection; `sim.run --open` uses the same viewer.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Context, task

from .. import settings
from ..errors import UsageError
from ..ui import say
from ..viewer import DEFAULT_BIND
from .common import task_errors

if TYPE_CHECKING:
    from ..viewer.server import ViewerServer

# The server and report modules load when a viewer task runs, not with every task.


def start_viewer(work_dir: Path, bind: str, open_browser: bool) -> ViewerServer:
    """A running viewer in a background thread (also for `sim.run --open`)."""
    from ..viewer import server as server_mod

    try:
        srv = server_mod.serve_in_thread(work_dir, bind)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot listen on {bind}: {e.strerror or e}") from None
    say(f"viewer on {srv.url} over {work_dir} (Ctrl-C stops it)")
    if open_browser:
        webbrowser.open(srv.url)
    return srv


def serve_until_interrupted(srv: ViewerServer, interrupted: bool = False) -> None:
    """Keep serving until Ctrl-C (at once when the run before was interrupted), then stop."""
    try:
        if not interrupted:
            say(f"still serving {srv.url}; Ctrl-C stops it")
            srv.stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()
        srv.server_close()


@task(
    help={
        "work_dir": "The work dir to show (default .patchbay-work).",
        "bind": "HOST:PORT to listen on (default 127.0.0.1:7421; only this host).",
        "open": "Open the page in the default browser.",
    },
)
def serve(
    c: Context, work_dir: str | None = None, bind: str = DEFAULT_BIND, open: bool = False
) -> None:
    """Serve the results viewer over the work dir until Ctrl-C."""
    with task_errors():
        s = settings.from_context(c, work_dir=work_dir)
        serve_until_interrupted(start_viewer(s.work_dir, bind, open))


@task(
    help={
        "work_dir": "The work dir holding the invocation (default .patchbay-work).",
        "invocation": "sim-YYMMDD-HHMMSS folder, or latest (default).",
        "output": "The HTML file to write.",
    },
)
def report(
    c: Context, output: str, work_dir: str | None = None, invocation: str = "latest"
) -> None:
    """Write one self-contained HTML report of an invocation (no server needed to view it)."""
    from ..viewer import report as report_mod

    with task_errors():
        s = settings.from_context(c, work_dir=work_dir)
        try:
            out = report_mod.write_report(s.work_dir, Path(output), invocation)
        except report_mod.ReportError as e:
            raise UsageError(str(e)) from None
        except OSError as e:  # a folder, no permission, no space, a name too long
            raise UsageError(
                f"--output {output}: cannot write the report there: {e.strerror or e}"
            ) from None
        except ValueError as e:  # a NUL in the name
            raise UsageError(f"--output {output!r}: {e}") from None
        say(f"report written to {out} ({out.stat().st_size} bytes)")
