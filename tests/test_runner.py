"""Runner resolution: version parsing, release download and cache, safe unpacking, git argv."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from patchbay_vm_tasks import downloads
from patchbay_vm_tasks.errors import TaskError, UsageError
from patchbay_vm_tasks.sim import runner
from patchbay_vm_tasks.sim.runner import RunnerSource

ASSET = "patchbay-x86_64-unknown-linux-musl.tar.gz"
RUNNER_BYTES = b"\x7fELF fake patchbay runner\n"


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o755
    return info


def release_tar(data: bytes = RUNNER_BYTES) -> bytes:
    # Releases put the binary in a folder; the runner is found at any depth.
    folder = tarfile.TarInfo("patchbay-x86_64-unknown-linux-musl")
    folder.type = tarfile.DIRTYPE
    return make_tar(
        [
            (folder, None),
            (file_member("patchbay-x86_64-unknown-linux-musl/README.md"), b"readme"),
            (file_member("patchbay-x86_64-unknown-linux-musl/patchbay"), data),
        ]
    )


def leftovers(folder: Path) -> list[str]:
    """Temp files a failed write might have left."""
    if not folder.exists():
        return []
    return [p.name for p in folder.rglob("*") if p.name.endswith(".part")]


# ── a local release server ───────────────────────────────────────────────────
# It stands in for GitHub's releases pages, which this machine cannot reach: the same
# URL layout (/releases/latest redirecting to /releases/tag/<tag>, assets under
# /releases/download/<tag>/<asset>), served on 127.0.0.1 only.


class ReleaseServer:
    """GitHub's release URL layout on the shared local server (conftest's http_server)."""

    def __init__(self, url: str, routes) -> None:
        self.routes = routes
        self.requests = routes.requests
        self.base = f"{url}/releases"

    def publish(self, tag: str, body: bytes, *, latest: bool = True) -> None:
        self.routes[f"/releases/download/{tag}/{ASSET}"] = (200, {}, body)
        self.routes[f"/releases/tag/{tag}"] = (200, {}, b"<html>release</html>")
        if latest:
            self.routes["/releases/latest"] = (302, {"Location": f"/releases/tag/{tag}"}, b"")


@pytest.fixture
def server(http_server) -> ReleaseServer:
    return ReleaseServer(*http_server)


@pytest.fixture
def dead_url() -> str:
    # A port that was free a moment ago: connecting is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/releases"


# ── parsing ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", RunnerSource("latest", "latest")),
        (" latest ", RunnerSource("latest", "latest")),
        ("v0.10.0", RunnerSource("tag", "v0.10.0")),
        ("0.10.0", RunnerSource("tag", "v0.10.0")),
        ("v1.2.3-rc.1", RunnerSource("tag", "v1.2.3-rc.1")),
        ("git:main", RunnerSource("git", "main")),
        ("git:3f2a9c1", RunnerSource("git", "3f2a9c1")),
        ("git:feature/x", RunnerSource("git", "feature/x")),
        ("path:/usr/local/bin/patchbay", RunnerSource("path", "/usr/local/bin/patchbay")),
        ("path:C:/odd:name", RunnerSource("path", "C:/odd:name")),
        ("builtin", RunnerSource("builtin", "")),
    ],
)
def test_parse_version(text: str, expected: RunnerSource) -> None:
    assert runner.parse_version(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("v1.2", "unknown --patchbay-version 'v1.2'"),
        ("newest", "use latest, vX.Y.Z"),
        ("git:", "git:REF needs a branch"),
        ("git:--upload-pack=evil", "not starting with '-'"),
        ("git:a b", "no spaces"),
        ("path:", "path: needs a file"),
        ("tag:v1.0.0", "unknown --patchbay-version"),
    ],
)
def test_parse_version_rejects(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        runner.parse_version(text)
    assert message in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("arch", "asset", "target"),
    [
        ("x86_64", "patchbay-x86_64-unknown-linux-musl.tar.gz", "x86_64-unknown-linux-musl"),
        ("amd64", "patchbay-x86_64-unknown-linux-musl.tar.gz", "x86_64-unknown-linux-musl"),
        ("aarch64", "patchbay-aarch64-unknown-linux-musl.tar.gz", "aarch64-unknown-linux-musl"),
        ("arm64", "patchbay-aarch64-unknown-linux-musl.tar.gz", "aarch64-unknown-linux-musl"),
    ],
)
def test_asset_and_target_per_arch(arch: str, asset: str, target: str) -> None:
    assert runner.asset_name(arch) == asset
    assert runner.musl_target_for(arch) == target
    assert runner.release_asset_url("https://h/r/", "v1.0.0", arch) == (
        f"https://h/r/download/v1.0.0/{asset}"
    )


def test_bad_arch_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unsupported guest arch 'riscv64'"):
        runner.resolve_runner("v1.0.0", tmp_path, "riscv64", base_url="http://127.0.0.1:9/r")
    assert not (tmp_path / ".patchbay-cache").exists()


def test_release_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_RELEASE_URL", raising=False)
    assert runner.release_base_url() == "https://github.com/n0-computer/patchbay/releases"
    monkeypatch.setenv("PATCHBAY_RELEASE_URL", "http://mirror/releases/")
    assert runner.release_base_url() == "http://mirror/releases"
    assert runner.release_base_url("http://param/r") == "http://param/r"


# ── safe extraction ──────────────────────────────────────────────────────────


def test_extract_member_finds_runner_at_any_depth(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(release_tar())
    dest = tmp_path / "out" / "patchbay"
    assert runner.extract_member(archive, "patchbay", dest) == dest
    assert dest.read_bytes() == RUNNER_BYTES
    assert dest.stat().st_mode & 0o777 == 0o755
    assert leftovers(tmp_path) == []


def test_extract_member_first_regular_file(tmp_path: Path) -> None:
    folder = tarfile.TarInfo("dist")
    folder.type = tarfile.DIRTYPE
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(
        make_tar([(folder, None), (file_member("dist/tool"), b"T"), (file_member("x"), b"X")])
    )
    runner.extract_member(archive, None, tmp_path / "tool")
    assert (tmp_path / "tool").read_bytes() == b"T"


def _hostile(kind: str) -> tarfile.TarInfo:
    if kind == "dotdot":
        return file_member("../evil")
    if kind == "nested-dotdot":
        return file_member("dist/../../evil")
    if kind == "absolute":
        return file_member("/tmp/evil-patchbay-test")
    info = tarfile.TarInfo("dist/patchbay-link")
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dotdot", "'../evil' has a '..' component"),
        ("nested-dotdot", "'dist/../../evil' has a '..' component"),
        ("absolute", "'/tmp/evil-patchbay-test' has an absolute path"),
        ("symlink", "'dist/patchbay-link' is a link"),
        ("hardlink", "'dist/patchbay-link' is a link"),
        ("device", "'dist/patchbay-link' is a device"),
    ],
)
def test_extract_member_refuses_hostile_archive(tmp_path: Path, kind: str, message: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    member = _hostile(kind)
    data = b"evil" if member.isfile() else None
    # The wanted runner is in there too: a hostile archive is refused as a whole.
    archive = work / "a.tar.gz"
    archive.write_bytes(make_tar([(member, data), (file_member("patchbay"), RUNNER_BYTES)]))
    dest = work / "out" / "patchbay"
    with pytest.raises(TaskError) as err:
        runner.extract_member(archive, "patchbay", dest)
    assert message in str(err.value)
    assert "refusing archive" in str(err.value)
    assert not isinstance(err.value, UsageError)
    assert not dest.exists()
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-patchbay-test").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a tarball", "cannot unpack"),
        (make_tar([(file_member("dist/other"), b"x")]), "has no file named 'patchbay'"),
    ],
)
def test_extract_member_bad_archives(tmp_path: Path, content: bytes, message: str) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(TaskError) as err:
        runner.extract_member(archive, "patchbay", tmp_path / "patchbay")
    assert message in str(err.value)
    assert not (tmp_path / "patchbay").exists()
    assert leftovers(tmp_path) == []


# ── downloads from the local release server ──────────────────────────────────


def test_latest_is_asked_for_at_most_once_a_day(
    tmp_path: Path, server: ReleaseServer, capsys: pytest.CaptureFixture
) -> None:
    server.publish("v0.1.0", release_tar())
    path = runner.resolve_runner("latest", tmp_path, "x86_64", base_url=server.base).path
    assert path == tmp_path / ".patchbay-cache" / "v0.1.0" / "patchbay"
    assert path.read_bytes() == RUNNER_BYTES
    assert os.access(path, os.X_OK)
    # The tarball is not kept, nor any temp file.
    assert sorted(p.name for p in path.parent.iterdir()) == ["patchbay"]

    # Within the day: the cached release, without a single request, and said so.
    server.publish("v0.2.0", release_tar(b"v2"))
    server.requests.clear()
    capsys.readouterr()
    assert runner.resolve_runner("latest", tmp_path, "x86_64", base_url=server.base).path == path
    assert server.requests == []
    assert "using the cached patchbay runner v0.1.0" in capsys.readouterr().err

    # --refresh (or a day later) asks again, and latest moves on.
    newer = runner.resolve_runner(
        "latest", tmp_path, "x86_64", base_url=server.base, refresh=True
    ).path
    assert newer == tmp_path / ".patchbay-cache" / "v0.2.0" / "patchbay"
    assert newer.read_bytes() == b"v2"
    stamp = next((tmp_path / ".patchbay-cache").glob(".checked-*"))
    old = stamp.stat().st_mtime - 2 * 86400
    os.utime(stamp, (old, old))
    server.requests.clear()
    runner.resolve_runner("latest", tmp_path, "x86_64", base_url=server.base)
    assert server.requests[0] == "/releases/latest"


def test_bare_version_means_tag_and_is_cached(tmp_path: Path, server: ReleaseServer) -> None:
    server.publish("v0.1.0", release_tar(), latest=False)
    path = runner.resolve_runner("0.1.0", tmp_path, "x86_64", base_url=server.base).path
    assert path.read_bytes() == RUNNER_BYTES
    server.requests.clear()
    assert runner.resolve_runner("v0.1.0", tmp_path, "x86_64", base_url=server.base).path == path
    assert server.requests == []  # a tag is immutable: no network on reuse


def test_base_url_from_env(
    tmp_path: Path, server: ReleaseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.publish("v0.1.0", release_tar())
    monkeypatch.setenv("PATCHBAY_RELEASE_URL", server.base)
    assert runner.resolve_runner("latest", tmp_path, "x86_64").path.read_bytes() == RUNNER_BYTES


def test_missing_release_is_404_error(tmp_path: Path, server: ReleaseServer) -> None:
    with pytest.raises(TaskError) as err:
        runner.resolve_runner("v9.9.9", tmp_path, "x86_64", base_url=server.base)
    msg = str(err.value)
    assert f"{server.base}/download/v9.9.9/{ASSET}" in msg
    assert "HTTP 404" in msg
    assert "pick another --patchbay-version" in msg
    assert err.value.exit_code == 69  # a pinned runner that cannot be had (SPEC 9.15)
    # Nothing that could pass for a cached release is left behind.
    assert not (tmp_path / ".patchbay-cache" / "v9.9.9").exists()
    assert leftovers(tmp_path) == []


def test_http_error_names_url_and_status(tmp_path: Path, server: ReleaseServer) -> None:
    server.routes["/boom"] = (500, {}, b"oops")
    url = server.base.replace("/releases", "/boom")
    with pytest.raises(downloads.HttpError) as err:
        downloads.download(url, tmp_path / "x")
    assert url in str(err.value)
    assert "HTTP 500" in str(err.value)
    assert err.value.status == 500
    assert list(tmp_path.iterdir()) == []


def test_short_download_leaves_nothing(tmp_path: Path, server: ReleaseServer) -> None:
    server.routes["/short"] = (200, {"Content-Length": "100000"}, b"only a little")
    with pytest.raises(TaskError):
        downloads.download(server.base.replace("/releases", "/short"), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_latest_redirect_without_tag(tmp_path: Path, server: ReleaseServer) -> None:
    server.routes["/releases/latest"] = (302, {"Location": "/releases"}, b"")
    server.routes["/releases"] = (200, {}, b"no releases")
    with pytest.raises(TaskError, match="did not lead to a release tag"):
        runner.resolve_runner("latest", tmp_path, "x86_64", base_url=server.base)


def test_unreachable_server_uses_newest_cached_latest(
    tmp_path: Path, server: ReleaseServer, dead_url: str, capsys: pytest.CaptureFixture
) -> None:
    server.publish("v0.1.0", release_tar())
    first = runner.resolve_runner("latest", tmp_path, "x86_64", base_url=server.base).path
    older = tmp_path / ".patchbay-cache" / "v0.0.9" / "patchbay"
    older.parent.mkdir()
    older.write_bytes(b"old")
    capsys.readouterr()

    path = runner.resolve_runner("latest", tmp_path, "x86_64", base_url=dead_url).path
    assert path == first
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "cannot reach the patchbay release server" in err
    assert "v0.1.0" in err


def test_unreachable_server_without_cache_falls_back_to_builtin(
    tmp_path: Path, dead_url: str, capsys: pytest.CaptureFixture
) -> None:
    resolved = runner.resolve_runner("latest", tmp_path, "x86_64", base_url=dead_url)
    assert resolved.is_builtin and resolved.kind is runner.RunnerKind.BUILTIN
    err = capsys.readouterr().err
    # One line that says what happens instead.
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert "cannot reach the patchbay release server" in line
    assert "using the builtin runner" in line
    assert leftovers(tmp_path) == []


def test_unreachable_server_for_a_tag(tmp_path: Path, dead_url: str) -> None:
    with pytest.raises(runner.RunnerUnavailable, match=r"cannot download patchbay v0\.1\.0") as e:
        runner.resolve_runner("v0.1.0", tmp_path, "x86_64", base_url=dead_url)
    assert e.value.exit_code == 69
    assert not (tmp_path / ".patchbay-cache" / "v0.1.0").exists()


def test_newest_cached_runner_orders_by_version(tmp_path: Path) -> None:
    for tag in ("v0.9.0", "v0.10.0", "v0.10.0-rc.1", "git-src"):
        (tmp_path / ".patchbay-cache" / tag).mkdir(parents=True)
        (tmp_path / ".patchbay-cache" / tag / "patchbay").write_bytes(tag.encode())
    tag, path = runner.newest_cached_runner(tmp_path)
    assert tag == "v0.10.0"
    assert path.read_bytes() == b"v0.10.0"
    assert runner.newest_cached_runner(tmp_path / "none") is None


# ── path:, builtin, install ──────────────────────────────────────────────────


def test_path_source(tmp_path: Path) -> None:
    binary = tmp_path / "patchbay"
    binary.write_bytes(RUNNER_BYTES)
    assert runner.resolve_runner(f"path:{binary}", tmp_path, "x86_64").path == binary


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file"),
        (lambda p: p, "is a directory"),
    ],
)
def test_path_source_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UsageError) as err:
        runner.resolve_runner(f"path:{make(tmp_path)}", tmp_path, "x86_64")
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_builtin_resolves_to_the_zipapp(tmp_path: Path) -> None:
    resolved = runner.resolve_runner("builtin", tmp_path, "x86_64")
    assert resolved.is_builtin and resolved.label.startswith("builtin ")
    dest = runner.install_runner(resolved, tmp_path / "work")
    assert dest == tmp_path / "work" / ".patchbay-bin" / "patchbay"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert dest.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert leftovers(tmp_path) == []


def path_runner(path: Path) -> runner.ResolvedRunner:
    return runner.ResolvedRunner(runner.RunnerKind.PATH, path, f"path:{path}")


def test_install_runner(tmp_path: Path) -> None:
    src = tmp_path / "src-patchbay"
    src.write_bytes(RUNNER_BYTES)
    src.chmod(0o600)
    work = tmp_path / "work"
    dest = runner.install_runner(path_runner(src), work)
    assert dest == work / ".patchbay-bin" / "patchbay"
    assert dest.read_bytes() == RUNNER_BYTES
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    src.write_bytes(b"newer")
    assert runner.install_runner(path_runner(src), work).read_bytes() == b"newer"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["patchbay"]
    # Installing the installed file onto itself keeps it.
    assert runner.install_runner(path_runner(dest), work).read_bytes() == b"newer"


def test_install_runner_missing_source_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        runner.install_runner(path_runner(tmp_path / "nope"), tmp_path / "work")
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "work" / ".patchbay-bin" / "patchbay").exists()


# ── git:REF ──────────────────────────────────────────────────────────────────


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's cache dir (where git:REF clones go) for these tests: a temp folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def test_git_argv_builders(tmp_path: Path, user_cache: Path) -> None:
    src = runner.git_src_dir(tmp_path)
    # Never in the work dir, which the guest writes (a hook there would run on the host).
    assert src.is_relative_to(user_cache / "patchbay" / "git-src")
    assert not src.is_relative_to(tmp_path / ".patchbay-cache")
    assert runner.git_src_dir(tmp_path / "other") != src
    url = "https://github.com/n0-computer/patchbay"
    assert runner.git_clone_argv(url, src) == ["git", "clone", "--no-checkout", url, str(src)]
    assert runner.git_fetch_argvs(url, src) == [
        ["git", "-C", str(src), "remote", "set-url", "origin", url],
        ["git", "-C", str(src), "fetch", "--force", "--tags", "--prune", "origin"],
    ]
    assert runner.git_ref_candidates("main") == ["origin/main", "main"]
    assert runner.git_verify_argv(src, "v1.0.0") == [
        "git", "-C", str(src), "rev-parse", "--verify", "--quiet", "v1.0.0^{commit}",
    ]  # fmt: skip
    assert runner.git_checkout_argv(src, "origin/main") == [
        "git", "-C", str(src), "checkout", "--force", "--detach", "origin/main",
    ]  # fmt: skip
    assert runner.cargo_runner_build_argv(src, "x86_64-unknown-linux-musl") == [
        "cargo", "build", "--release",
        "--manifest-path", str(src / "Cargo.toml"),
        "--target-dir", str(src / "target"),
        "--target", "x86_64-unknown-linux-musl",
        "--bin", "patchbay",
    ]  # fmt: skip


class FakeRun:
    """Records argv and plays git/cargo: the real clone needs the network."""

    def __init__(self, src: Path, target: str, known_refs: set[str]) -> None:
        self.src, self.target, self.known = src, target, known_refs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        rc = 0
        if argv[:2] == ["git", "clone"]:
            (self.src / ".git").mkdir(parents=True)
        elif "rev-parse" in argv:
            rc = 0 if argv[-1].removesuffix("^{commit}") in self.known else 1
        elif argv[:2] == ["cargo", "build"]:
            out = runner.git_built_runner_path(self.src, self.target)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(RUNNER_BYTES)
        return subprocess.CompletedProcess(argv, rc)


def test_git_ref_build_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_GIT_URL", "file:///mirror/patchbay")
    src = runner.git_src_dir(tmp_path)
    fake = FakeRun(src, "x86_64-unknown-linux-musl", {"v0.3.0"})
    path = runner.resolve_runner("git:v0.3.0", tmp_path, "x86_64", run=fake).path
    assert path == src / "target" / "x86_64-unknown-linux-musl" / "release" / "patchbay"
    assert [c[:2] if c[0] == "cargo" else c[3:5] for c in fake.calls[1:]] == [
        ["remote", "set-url"],
        ["fetch", "--force"],
        ["rev-parse", "--verify"],  # origin/v0.3.0: not a branch
        ["rev-parse", "--verify"],  # v0.3.0: the tag
        ["checkout", "--force"],
        ["cargo", "build"],
    ]
    assert fake.calls[0] == runner.git_clone_argv("file:///mirror/patchbay", src)
    assert fake.calls[-2][-1] == "v0.3.0"

    # A second build reuses the clone.
    fake.calls.clear()
    runner.resolve_runner("git:v0.3.0", tmp_path, "x86_64", run=fake)
    assert not any(c[:2] == ["git", "clone"] for c in fake.calls)


def test_git_unknown_ref(tmp_path: Path) -> None:
    fake = FakeRun(runner.git_src_dir(tmp_path), "x86_64-unknown-linux-musl", set())
    with pytest.raises(UsageError) as err:
        runner.resolve_runner("git:nosuch", tmp_path, "x86_64", run=fake)
    assert "git ref 'nosuch' is not a branch, tag or commit" in str(err.value)
    assert not any(c[0] == "cargo" for c in fake.calls)


def test_git_failing_command_is_task_error(tmp_path: Path) -> None:
    def failing(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 128)

    with pytest.raises(runner.RunnerUnavailable, match=r"cloning .* failed \(exit 128\)") as e:
        runner.resolve_runner("git:main", tmp_path, "x86_64", run=failing)
    assert e.value.exit_code == 69
