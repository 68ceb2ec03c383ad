"""`sim.push`, and `sim.serve`'s results-server mode (`--accept-push`, `--data-dir`).

Registered in the `sim` collection (tasks/sim.py); `sim.serve` (tasks/view.py) calls
`serve_results` when it is asked for the results server.
"""

from __future__ import annotations

import os
from pathlib import Path

from invoke import Context, Exit

from .. import settings
from ..errors import UsageError
from ..ui import say
from .common import emit, task, task_errors

API_KEY_ENV = "PATCHBAY_API_KEY"
MIN_KEY = 16


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("patchbay")) / "results"


def serve_results(
    *,
    bind: str,
    open_browser: bool,
    accept_push: bool,
    api_key: str | None,
    data_dir: str | None,
    retention: str | None,
    max_push: str | None,
) -> None:
    """The results server until Ctrl-C: pushed runs in data_dir (default under the user's
    data dir), written only with accept_push (and then only with the API key)."""
    import webbrowser

    from ..viewer import archive, results, store
    from ..viewer import server as server_mod
    from .view import serve_until_interrupted

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if accept_push:
        if not key:
            raise UsageError(
                f"--accept-push needs the API key pushes must send: --api-key KEY or "
                f"{API_KEY_ENV} (make one with `openssl rand -hex 32`)"
            )
        if len(key) < MIN_KEY or not key.isascii() or not key.isprintable() or " " in key:
            raise UsageError(
                f"the API key must be at least {MIN_KEY} printable ASCII characters without "
                "spaces (make one with `openssl rand -hex 32`)"
            )
    elif api_key is not None:
        raise UsageError("--api-key is for --accept-push (without it nothing can be pushed)")
    try:
        keep = store.parse_size(retention) if retention else None
        limit = store.parse_size(max_push) if max_push else None
    except ValueError as e:
        raise UsageError(f"--retention/--max-push: {e}") from None
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if not accept_push:
        if retention:
            raise UsageError(
                "--retention is for --accept-push (a read-only server deletes nothing)"
            )
        if not folder.is_dir():
            raise UsageError(
                f"--data-dir {folder}: no such folder (a server started with --accept-push "
                "makes it)"
            )
    elif folder.exists() and not folder.is_dir():
        raise UsageError(f"--data-dir {folder}: not a folder")
    try:
        results_store = store.Store(folder, writable=accept_push, retention=keep)
    except store.DataDirBusy as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--data-dir {folder}: {e.strerror or e}") from None
    limits = archive.Limits() if limit is None else archive.Limits(max_body=limit)
    app = results.Results(results_store, api_key=key if accept_push else None, limits=limits)
    try:
        srv = server_mod.serve_in_thread(folder, bind, results=app)
    except ValueError as e:
        results_store.close()
        raise UsageError(str(e)) from None
    except OSError as e:
        results_store.close()
        raise UsageError(f"cannot listen on {bind}: {e.strerror or e}") from None
    n = len(results_store.runs)
    say(
        f"results server on {srv.url} over {folder} ({n} run{'s' if n != 1 else ''}"
        + (
            f", {'rebuilt the index from the folders' if results_store.rebuilt and n else ''}"
        ).rstrip(", ")
        + "); Ctrl-C stops it"
    )
    if accept_push:
        where = f", oldest deleted past {retention}" if retention else ""
        say(f"accepting pushes at {srv.url}api/push/PROJECT (Bearer key){where}")
    else:
        say("read only: nothing can be pushed (start with --accept-push to take pushes)")
    if srv.hosts.network:
        urls = srv.hosts.urls()
        where = ", ".join(urls) if urls else "(no address but loopback yet)"
        say(f"the runs are visible to the network, no login asked: {where}")
    if open_browser:
        webbrowser.open(srv.url + "runs")
    try:
        serve_until_interrupted(srv, say_still=False)
    finally:
        results_store.close()


@task(
    name="push",
    auto_shortflags=False,  # -h is help's; CI scripts read better with long flags
    iterable=["threshold"],
    help={
        "url": "The results server (sim.serve --accept-push, or patchbay-serve), e.g. "
        "https://patchbay.example.com.",
        "project": "The project to file the run under (in GitHub Actions default: the "
        "repository's name).",
        "work_dir": "The work dir whose run to push (default .patchbay-work).",
        "invocation": "Which invocation of the work dir: sim-YYMMDD-HHMMSS or latest "
        "(default; with the other tries of its --repeat).",
        "run_dir": "Push this run folder instead (anywhere: a CI artifact).",
        "testdir": "Push the labs Rust tests wrote (test.run; the current testdir-N).",
        "api_key": f"The server's key; better in {API_KEY_ENV} (a flag shows in `ps`).",
        "branch": "The branch (GitHub Actions: the PR's head branch or the pushed ref).",
        "commit": "The commit (GitHub Actions: the PR's head or GITHUB_SHA).",
        "pr": "The PR's number (GitHub Actions: from the event).",
        "pr_url": "The PR's URL (GitHub Actions: from the event).",
        "title": "A title: the PR's title or the commit's first line in GitHub Actions.",
        "base_branch": "The branch to compare with on the server (GitHub Actions: the PR's "
        "base, else the repository's default; the server's default: main, else master).",
        "threshold": "METRIC=-N% or METRIC=+N% (as sim.compare's): the server marks the "
        "changes against the base branch that cross it, and sim.push exits 1 when one "
        "does. Repeatable.",
    },
)
def push(
    c: Context,
    url: str,
    project: str | None = None,
    work_dir: str | None = None,
    invocation: str | None = None,
    run_dir: str | None = None,
    testdir: bool = False,
    api_key: str | None = None,
    branch: str | None = None,
    commit: str | None = None,
    pr: str | None = None,
    pr_url: str | None = None,
    title: str | None = None,
    base_branch: str | None = None,
    threshold: list[str] | None = None,
) -> None:
    """Push a run to a results server and print where to see it.

    The latest invocation of the work dir (or --invocation, --run-dir, --testdir), with a
    run.json of CI facts (from the flags, or in GitHub Actions from its environment).
    Prints the run's URL (URL/runs#PATH); in GitHub Actions also sets PATCHBAY_VIEW_URL
    and PATCHBAY_SUMMARY for later steps. Exit 0 stored, 69 the server cannot be reached,
    2 the key was refused or bad input, 1 any other refusal."""
    from ..sim import push as push_mod

    with task_errors():
        push_mod.check_url(url)
        env = os.environ
        chosen = sum(bool(x) for x in (invocation, run_dir, testdir))
        if chosen > 1:
            raise UsageError("give one of --invocation, --run-dir and --testdir")
        key = api_key or env.get(API_KEY_ENV)
        if not key:
            raise UsageError(f"give the server's key: {API_KEY_ENV}=KEY (or --api-key)")
        project = project or push_mod.github_facts(env).get("project")
        if not project:
            raise UsageError("give the project: --project NAME")
        from ..viewer import store

        if not store.valid_project(project):
            raise UsageError(
                f"--project {project!r}: letters, digits, '.', '_' and '-' (at most 100)"
            )
        s = settings.from_context(c, work_dir=work_dir)
        if run_dir:
            contents = push_mod.folder_contents(Path(run_dir))
        elif testdir:
            contents = push_mod.testdir_contents(s.work_dir)
        else:
            contents = push_mod.latest_contents(s.work_dir, invocation)
        given = {
            "branch": branch, "commit": commit, "pr": pr, "pr_url": pr_url, "title": title,
            "base_branch": base_branch,
        }  # fmt: skip
        from ..sim import compare as compare_mod

        try:
            thresholds = [t.text for t in compare_mod.parse_thresholds(threshold or [])]
        except compare_mod.ThresholdError as e:
            raise UsageError(str(e)) from None
        run_json = push_mod.manifest(project, given, env)
        if thresholds:
            run_json["thresholds"] = thresholds
        packed = push_mod.pack(contents, run_json)
        try:
            say(
                f"pushing {contents.what} ({packed.files} files, {packed.size} bytes packed) "
                f"to {url} as {project}"
                + (f", branch {run_json['branch']}" if run_json.get("branch") else "")
                + (f", PR #{run_json['pr']}" if run_json.get("pr") else "")
            )
            if packed.skipped:
                shown = ", ".join(packed.skipped[:5]) + (" ..." if len(packed.skipped) > 5 else "")
                say(f"left out (links, FIFOs, devices, unreadable): {shown}")
            body = push_mod.send(url, project, key, packed)
        finally:
            packed.file.close()
        view = push_mod.view_url(url, body["path"])
        for line in push_mod.describe(body):
            say(line)
        push_mod.github_outputs(env, view, body)
        emit(view)
    crossed = (body.get("comparison") or {}).get("crossed") or []
    if crossed:
        raise Exit(f"error: {len(crossed)} change(s) crossed a --threshold", code=1)
