"""`sim.push URL --project P`: a run sent to a results server (`sim.serve --accept-push`,
or patchbay's own patchbay-serve), as patchbay's CI snippet sends it: a tar.gz with a
`run.json` (project, branch, commit, pr, pr_url, title, created_at, and our base_branch)
at its top, POSTed to `URL/api/push/PROJECT` with `Authorization: Bearer KEY`.

What goes in: the work dir's latest invocation (with the other tries of its --repeat),
one invocation by name, a run folder from anywhere (a CI artifact), or the labs of the
current testdir generation (`--testdir`, laid out as patchbay's snippet sends a
testdir). The work dir is written by the guest: folders are walked without following a
link, files opened through `files` (no link followed), and links, FIFOs and devices
are left out and counted.

In GitHub Actions the run.json facts come from its environment (GITHUB_* and the event
file); flags override them. Exit codes: 0 stored, 69 the server cannot be reached (no
connection, a timeout, a TLS failure, 502/503/504 from a proxy), 2 a refused key (401)
or bad input, 1 any other refusal (the server's error is printed).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from .. import files
from ..errors import EXIT_UNAVAILABLE, TaskError, UsageError
from . import rundata, workdir

TIMEOUT_S = (15.0, 300.0)  # connect, then each read of the answer
RUN_JSON = "run.json"
FIELDS = ("branch", "commit", "pr", "pr_url", "title", "created_at", "base_branch")


class ServerUnavailable(TaskError):
    """The results server could not be reached."""

    exit_code = EXIT_UNAVAILABLE


class KeyRefused(TaskError):
    """The server refused the API key (401)."""

    exit_code = 2


# ── what is pushed ─────────────────────────────────────────────────────────────────


@dataclass
class Contents:
    """Folders to put into the archive: (where, its name in the archive or "" for the
    archive's top)."""

    what: str
    folders: list[tuple[Path, str]]


def latest_contents(work_dir: Path, invocation: str | None) -> Contents:
    """The work dir's latest invocation (or the one named) with its --repeat tries."""
    if invocation in (None, "latest"):
        group = rundata.latest_group(work_dir)
        if group is None:
            raise UsageError(
                f"no runs in {work_dir} to push: run sim.run first, or give --run-dir DIR "
                "or --testdir"
            )
    else:
        if not workdir.RUN_DIR.fullmatch(invocation) or not (work_dir / invocation).is_dir():
            raise UsageError(f"--invocation {invocation}: no such run folder in {work_dir}")
        group = rundata.group_of(work_dir, invocation)
        if group is None:
            raise UsageError(f"--invocation {invocation}: not a run folder (no manifest.json)")
    names = group.folders()
    what = names[0] if len(names) == 1 else f"{group.label} ({len(names)} tries)"
    return Contents(what, [(work_dir / name, name) for name in names])


def testdir_contents(work_dir: Path) -> Contents:
    from ..viewer import testdir

    parts = testdir.parts(work_dir)
    if parts is None:
        raise UsageError(
            f"no test output in {testdir.tests_dir(work_dir)} to push: run test.run with "
            "tests that write labs (patchbay's testdir!())"
        )
    return Contents(f"the labs of {parts[-1]}", [(work_dir.joinpath(*parts), "")])


def folder_contents(folder: Path) -> Contents:
    if not folder.is_dir():
        raise UsageError(f"--run-dir {folder}: no such folder")
    if not rundata.is_run_folder(folder):
        raise UsageError(
            f"--run-dir {folder}: not a run folder (no manifest.json, progress.json or "
            "combined-results.json in it)"
        )
    name = folder.resolve().name
    # A folder named as a run folder keeps its name; another (ci-results/run) goes at the
    # top, and the server puts it into a folder named from its manifest.
    return Contents(str(folder), [(folder, name if workdir.RUN_DIR.fullmatch(name) else "")])


# ── run.json ────────────────────────────────────────────────────────────────────


def github_facts(env: Mapping[str, str]) -> dict[str, Any]:
    """run.json's facts in GitHub Actions (GITHUB_ACTIONS=true): from its variables and
    the event's JSON (GITHUB_EVENT_PATH); {} elsewhere."""
    if env.get("GITHUB_ACTIONS") != "true":
        return {}
    event: dict[str, Any] = {}
    path = env.get("GITHUB_EVENT_PATH")
    if path:
        try:
            with open(path, "rb") as f:
                loaded = files.loads_json(f.read(16 * 1024 * 1024).decode("utf-8"))
            event = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            event = {}
    pr = event.get("pull_request") if isinstance(event.get("pull_request"), dict) else None
    repo = event.get("repository") if isinstance(event.get("repository"), dict) else {}
    head_commit = event.get("head_commit") if isinstance(event.get("head_commit"), dict) else {}
    facts: dict[str, Any] = {
        "project": (env.get("GITHUB_REPOSITORY") or "").rpartition("/")[2] or None,
        "branch": env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or None,
        "commit": env.get("GITHUB_SHA") or None,
    }
    if pr is not None:
        head = pr.get("head") if isinstance(pr.get("head"), dict) else {}
        base = pr.get("base") if isinstance(pr.get("base"), dict) else {}
        facts.update(
            pr=pr.get("number") if isinstance(pr.get("number"), int) else None,
            pr_url=pr.get("html_url") if isinstance(pr.get("html_url"), str) else None,
            title=pr.get("title") if isinstance(pr.get("title"), str) else None,
            commit=head.get("sha") if isinstance(head.get("sha"), str) else facts["commit"],
            base_branch=env.get("GITHUB_BASE_REF") or base.get("ref") or None,
        )
    else:
        message = head_commit.get("message")
        facts["title"] = message.splitlines()[0] if isinstance(message, str) and message else None
        default = repo.get("default_branch")
        facts["base_branch"] = default if isinstance(default, str) else None
    return facts


def manifest(project: str, given: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """run.json: the flags' values over GitHub's facts; created_at now (UTC)."""
    facts = github_facts(env)
    out: dict[str, Any] = {"project": project}
    for key in FIELDS:
        value = given.get(key)
        out[key] = value if value not in (None, "") else facts.get(key)
    if out["pr"] is not None:
        try:
            out["pr"] = int(out["pr"])
        except (TypeError, ValueError):
            raise UsageError(f"--pr {out['pr']!r}: give the PR's number") from None
    out["created_at"] = out["created_at"] or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


# ── the archive ─────────────────────────────────────────────────────────────────


@dataclass
class Packed:
    file: IO[bytes]
    size: int
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _add_folder(tar: tarfile.TarFile, root: Path, name: str, packed: Packed) -> None:
    """root's files and folders into tar under name ("" for the top); no link is
    followed, and what is no file or folder is skipped (and named in packed.skipped)."""
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        folder = root.joinpath(*rel)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            packed.skipped.append(f"{folder} ({e.strerror or e})")
            continue
        for entry in entries:
            parts = (*rel, entry.name)
            shown = "/".join(p for p in (name, *parts) if p)
            if not files.safe_segment(entry.name):
                packed.skipped.append(shown)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                packed.skipped.append(shown)
                continue
            if stat.S_ISDIR(st.st_mode):
                info = tarfile.TarInfo(shown)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(st.st_mtime)
                tar.addfile(info)
                stack.append(parts)
                continue
            if not stat.S_ISREG(st.st_mode):
                packed.skipped.append(shown)
                continue
            try:
                fd, fst = files.open_in(root, list(parts))
            except OSError:
                packed.skipped.append(shown)
                continue
            with os.fdopen(fd, "rb") as f:
                info = tarfile.TarInfo(shown)
                info.size, info.mode, info.mtime = fst.st_size, 0o644, int(fst.st_mtime)
                tar.addfile(info, _Exactly(f, fst.st_size))
            packed.files += 1
            packed.bytes += fst.st_size


class _Exactly(io.RawIOBase):
    """A file read as exactly `size` bytes: cut when it grew, zero-padded when it shrank
    since its size was taken (a log still being written must not break the archive)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(want) or b""
        if len(data) < want and not data:
            data = bytes(want)
        self.left -= len(data)
        return data


def pack(contents: Contents, run_json: dict[str, Any]) -> Packed:
    """The archive in a temporary file (deleted when closed): run.json first, then the
    folders."""
    out = tempfile.TemporaryFile(prefix="patchbay-push-")  # noqa: SIM115 (the caller closes)
    packed = Packed(out, 0)
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        data = (json.dumps(run_json, indent=2) + "\n").encode()
        info = tarfile.TarInfo(RUN_JSON)
        info.size, info.mode = len(data), 0o644
        info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
        tar.addfile(info, io.BytesIO(data))
        for folder, name in contents.folders:
            if name:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(info.mtime)
                tar.addfile(info)
            _add_folder(tar, folder, name, packed)
    packed.size = out.tell()
    out.seek(0)
    return packed


# ── sending ─────────────────────────────────────────────────────────────────────


def push_url(url: str, project: str) -> str:
    return url.rstrip("/") + "/api/push/" + quote(project, safe="")


def view_url(url: str, path: str) -> str:
    return url.rstrip("/") + "/runs#" + path


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{url!r}: give the server's URL, e.g. https://patchbay.example.com")


def send(url: str, project: str, key: str, packed: Packed) -> dict[str, Any]:
    """POST the archive; the server's JSON answer. ServerUnavailable, KeyRefused or
    TaskError when it is not stored (the key is never part of a message)."""
    import requests

    target = push_url(url, project)
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/gzip",
        "Content-Length": str(packed.size),
    }
    try:
        answer = requests.post(target, data=packed.file, headers=headers, timeout=TIMEOUT_S)
    except requests.exceptions.SSLError as e:
        raise ServerUnavailable(
            f"cannot reach {url} securely: {_reason(e)} (a private CA: point "
            "REQUESTS_CA_BUNDLE at its certificate)"
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise ServerUnavailable(f"cannot reach {url}: {_reason(e)}") from None
    except requests.exceptions.RequestException as e:
        raise ServerUnavailable(f"cannot push to {url}: {_reason(e)}") from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, str) else answer.text[:300].strip() or answer.reason
    if answer.status_code == 401:
        raise KeyRefused(
            f"{url} refused the API key (401): give the server's key in PATCHBAY_API_KEY "
            "or --api-key"
        )
    if answer.status_code in (502, 503, 504):
        raise ServerUnavailable(f"{url} is not available ({answer.status_code}): {error}")
    if answer.status_code != 200 or not isinstance(body, dict) or not body.get("path"):
        raise TaskError(f"{url} refused the push ({answer.status_code}): {error}")
    return body


def _reason(error: Exception) -> str:
    """The innermost reason of a requests error, without the URL's query or any header."""
    inner: BaseException = error
    while True:
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    text = str(inner) or type(inner).__name__
    return text.split(": ", 1)[-1] if text.startswith("<") else text


def describe(body: dict[str, Any]) -> list[str]:
    """What the server said about the stored run: status, summary, comparison."""
    lines = []
    summary = body.get("summary") or {}
    kind = body.get("kind")
    if kind == "sims":
        lines.append(
            f"stored, status {body.get('status')}: {summary.get('sims')} sims, "
            f"{summary.get('passed')} ok, {summary.get('failed')} failed"
        )
    elif kind == "labs":
        lines.append(
            f"stored, status {body.get('status')}: {summary.get('labs')} labs, "
            f"{summary.get('passed')} passed, {summary.get('failed')} failed"
        )
    c = body.get("comparison")
    if isinstance(c, dict):
        where = f"{c.get('base_branch') or 'base'} {str(c.get('base_commit') or '')[:7]}".strip()
        text = f"compared with {where}: {c.get('worse', 0)} worse, {c.get('better', 0)} better"
        if c.get("newly_failed"):
            text += f"; failing now: {', '.join(c['newly_failed'])}"
        lines.append(text)
        lines += [f"THRESHOLD {x}" for x in c.get("crossed") or []]
    elif kind in ("sims", "labs"):
        lines.append("not compared: no earlier run of the base branch on the server")
    lines += [f"note: {w}" for w in body.get("warnings") or []]
    return lines


def one_line(body: dict[str, Any]) -> str:
    """The summary of a push in one line (for a PR comment)."""
    return "; ".join(describe(body)[:2])


def github_outputs(env: Mapping[str, str], view: str, body: dict[str, Any]) -> list[str]:
    """In GitHub Actions: PATCHBAY_VIEW_URL and PATCHBAY_SUMMARY into $GITHUB_ENV (as
    patchbay's snippet sets the URL), view_url and summary into $GITHUB_OUTPUT. The
    files written."""
    written = []
    summary = one_line(body).replace("\n", " ")
    for var, lines in (
        ("GITHUB_ENV", [f"PATCHBAY_VIEW_URL={view}", f"PATCHBAY_SUMMARY={summary}"]),
        ("GITHUB_OUTPUT", [f"view_url={view}", f"summary={summary}"]),
    ):
        path = env.get(var)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
            written.append(var)
    return written
