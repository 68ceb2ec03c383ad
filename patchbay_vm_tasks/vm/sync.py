"""Copying instead of sharing (`QEMU_VM_FS=none`, the only way on QEMU for Windows).

Without shared folders the guest's /app, /target and /work are its own folders (made by
`shares.copied_folders_script`, owned by the guest user). The tasks prepare the host work
dir exactly as with shares; then `push` copies what the guest command names into the
guest, and `pull` brings the results back into the host work dir, so the viewer, the
report, JUnit and the `runs` listing read them where they always do. Both go over the
task's one kept SSH connection (SFTP, `conn.sftp()`): no scp, no rsync, no new handshake.

Only what changed moves. Each guest root keeps a manifest of what was sent (the host
file's size, mtime in ns and mode); a file is sent when it is new, differs from the
manifest, or the guest's copy is not as sent (size, mtime in whole seconds, which is
what SFTP carries, or mode). Results come back when their size or mtime differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..errors import TaskError
from ..settings import FsMode
from ..ui import say, warn
from . import guest

if TYPE_CHECKING:
    from .record import VmRecord

MANIFEST = ".patchbay-sync.json"
PART_SUFFIX = ".patchbay-part"
# Folders of a pulled run nested deeper than this are left in the guest (ours: 3).
MAX_PULL_DEPTH = 32


class SyncError(TaskError):
    """A copy to or from the guest failed; the message names the file and the cause."""


@dataclass(frozen=True)
class FileState:
    size: int
    mtime: int  # whole seconds (SFTP v3 carries no more)
    mode: int  # permission bits only

    @classmethod
    def of(cls, st: Any) -> FileState:
        return cls(int(st.st_size or 0), int(st.st_mtime or 0), stat.S_IMODE(st.st_mode or 0))


@dataclass
class Copied:
    """What one push or pull did."""

    files: int = 0
    bytes: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: Copied) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.unchanged += other.unchanged
        self.removed += other.removed
        self.failed += other.failed
        self.seconds += other.seconds

    def describe(self) -> str:
        text = f"{self.files} file(s), {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        if self.unchanged:
            text += f"; {self.unchanged} unchanged"
        if self.removed:
            text += f"; {self.removed} removed"
        return text


def copies_files(record: VmRecord) -> bool:
    """Whether the running VM (its record) has no shares, so files are copied."""
    return record.fs_mode == FsMode.NONE


# --- pure parts: which files move ---------------------------------------------------


def host_entry(path: Path) -> list[int]:
    """A manifest entry: [size, mtime_ns, mode] of a host file."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)]


def plan_push(
    host: Mapping[str, Sequence[int]],
    manifest: Mapping[str, Sequence[int]],
    remote: Mapping[str, FileState | None],
) -> list[str]:
    """The relative paths to send, sorted: new, changed on the host since they were sent
    (manifest), or no longer as sent in the guest (remote: None when absent there)."""
    send = []
    for rel, entry in host.items():
        size, mtime_ns, mode = entry
        here = remote.get(rel)
        as_sent = here == FileState(size, mtime_ns // 1_000_000_000, mode)
        if list(manifest.get(rel, ())) != list(entry) or not as_sent:
            send.append(rel)
    return sorted(send)


def stale_entries(manifest: Mapping[str, Any], exists: Any) -> list[str]:
    """Files sent earlier whose host file is gone (`exists(rel)` False): the guest's
    copies go too, so old test binaries (hundreds of MB each) do not pile up there."""
    return sorted(rel for rel in manifest if not exists(rel))


def plan_pull(remote: Mapping[str, FileState], local: Mapping[str, FileState | None]) -> list[str]:
    """The guest files to fetch: absent on the host, or of another size or mtime."""
    out = []
    for rel, there in remote.items():
        here = local.get(rel)
        if here is None or (here.size, here.mtime) != (there.size, there.mtime):
            out.append(rel)
    return sorted(out)


def folder_chain(rels: Iterable[str]) -> list[str]:
    """Every folder on the way to the files, parents first: a/b/c -> a, a/b."""
    out = set()
    for rel in rels:
        parts = rel.split("/")[:-1]
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(out)


def split_guest_paths(
    guest_paths: Iterable[str], roots: Mapping[str, Path]
) -> dict[str, list[str]]:
    """Group guest paths by the root they lie under: {"/work": [".patchbay-bin/patchbay"]}.

    roots: guest root -> host folder (`VmSettings.mounts()`). A path under no root is a
    TaskError (nothing could put it in the guest)."""
    out: dict[str, list[str]] = {}
    for raw in guest_paths:
        path = posixpath.normpath(raw)
        for root in sorted(roots, key=len, reverse=True):
            if path.startswith(root + "/"):
                rel = path[len(root) + 1 :]
                if rel.split("/")[0] == "..":
                    break
                out.setdefault(root, [])
                if rel not in out[root]:
                    out[root].append(rel)
                break
        else:
            raise TaskError(f"{raw} lies under none of {', '.join(roots)}: cannot copy it")
    return out


# --- SFTP ---------------------------------------------------------------------------


def open_sftp(conn: Any) -> Any:
    try:
        return conn.sftp()
    except Exception as e:  # noqa: BLE001 (paramiko raises several kinds)
        raise SyncError(f"cannot open SFTP to the guest: {type(e).__name__}: {e}") from None


def _listing(sftp: Any, path: str) -> dict[str, Any] | None:
    """name -> SFTPAttributes of a guest folder; None when it does not exist."""
    try:
        return {a.filename: a for a in sftp.listdir_attr(path)}
    except FileNotFoundError:
        return None


def _read_manifest(sftp: Any, guest_root: str) -> dict[str, list[int]]:
    # The guest may have written it: read with the limits of any run file.
    try:
        with sftp.open(f"{guest_root}/{MANIFEST}", "r") as f:
            data = files.loads_json(f.read(files.MAX_JSON_BYTES + 1).decode())
    except (OSError, ValueError):
        return {}
    listed = data.get("files") if isinstance(data, dict) else None
    return listed if isinstance(listed, dict) else {}


def _write_manifest(sftp: Any, guest_root: str, entries: Mapping[str, Sequence[int]]) -> None:
    tmp = f"{guest_root}/{MANIFEST}{PART_SUFFIX}"
    with sftp.open(tmp, "w") as f:
        f.write(json.dumps({"files": dict(sorted(entries.items()))}).encode())
    sftp.posix_rename(tmp, f"{guest_root}/{MANIFEST}")


def push(conn: Any, host_root: Path, guest_root: str, paths: Iterable[str]) -> Copied:
    """Copy `paths` (relative, posix) from host_root to guest_root when changed, keeping
    modes and mtimes; folders are made with their host modes (binaries/tests is 0777).
    Files sent earlier whose host file has gone are removed in the guest."""
    sftp = open_sftp(conn)  # the handshake and SFTP session (once per task) are not copying
    started = time.monotonic()
    rels = sorted({posixpath.normpath(p) for p in paths})
    host = {}
    for rel in rels:
        try:
            host[rel] = host_entry(host_root / rel)
        except OSError as e:
            raise SyncError(f"cannot copy {host_root / rel} to the guest: {e.strerror}") from None
    done = Copied()
    try:
        manifest = _read_manifest(sftp, guest_root)
        # One listing per folder on the way: the files' and the folders' own attributes.
        chain = folder_chain(rels)
        listings = {d: _listing(sftp, _join(guest_root, d)) for d in ["", *chain]}
        remote = {}
        for rel in rels:
            listing = listings.get(posixpath.dirname(rel))
            attrs = (listing or {}).get(posixpath.basename(rel))
            is_file = attrs is not None and stat.S_ISREG(attrs.st_mode or 0)
            remote[rel] = FileState.of(attrs) if is_file else None
        send = plan_push(host, manifest, remote)
        for d in chain:
            parent = listings.get(posixpath.dirname(d)) or {}
            attrs = parent.get(posixpath.basename(d))
            mode = stat.S_IMODE((host_root / d).stat().st_mode)
            if attrs is None:
                sftp.mkdir(_join(guest_root, d))
            if attrs is None or stat.S_IMODE(attrs.st_mode or 0) != mode:
                sftp.chmod(_join(guest_root, d), mode)
        for rel in send:
            _put(sftp, host_root / rel, _join(guest_root, rel), host[rel])
            done.files += 1
            done.bytes += host[rel][0]
        done.unchanged = len(rels) - len(send)
        gone = stale_entries(
            {k: v for k, v in manifest.items() if k not in host},
            lambda rel: (host_root / rel).exists(),
        )
        for rel in gone:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(_join(guest_root, rel))
            done.removed += 1
        kept = {k: v for k, v in manifest.items() if k not in gone}
        updated = {**kept, **host}
        if updated != manifest:  # four round trips saved when nothing changed
            _write_manifest(sftp, guest_root, updated)
    except OSError as e:
        raise SyncError(
            f"copying to the guest's {guest_root} failed: {type(e).__name__}: {e}"
        ) from None
    done.seconds = time.monotonic() - started
    return done


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if rel else root


def _put(sftp: Any, local: Path, remote: str, entry: Sequence[int]) -> None:
    """Through a temp name and a rename: a binary still running in the guest keeps its
    file, and a reader never sees half of one."""
    _size, mtime_ns, mode = entry
    tmp = f"{posixpath.dirname(remote)}/.{posixpath.basename(remote)}{PART_SUFFIX}"
    sftp.put(str(local), tmp, confirm=True)
    sftp.chmod(tmp, mode)
    seconds = mtime_ns // 1_000_000_000
    sftp.utime(tmp, (seconds, seconds))
    sftp.posix_rename(tmp, remote)


def _walk(sftp: Any, root: str) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
    """(files rel -> attrs, folders, symlinks, refused) under a guest folder, folders
    first. Names that are not plain names (`..`, a separator) and folders deeper than
    MAX_PULL_DEPTH are refused: the guest lists them, and it is not trusted."""
    files_: dict[str, Any] = {}
    folders: list[str] = []
    links: list[str] = []
    refused: list[str] = []
    pending = [("", 0)]
    while pending:
        rel, depth = pending.pop()
        for attrs in sftp.listdir_attr(_join(root, rel)):
            name = attrs.filename
            sub = f"{rel}/{name}" if rel else name
            if not files.safe_segment(name):
                refused.append(f"{root}/{sub}: not a plain file name")
                continue
            mode = attrs.st_mode or 0
            if stat.S_ISDIR(mode):
                if depth + 1 >= MAX_PULL_DEPTH:
                    refused.append(f"{root}/{sub}: folders nested deeper than {MAX_PULL_DEPTH}")
                    continue
                folders.append(sub)
                pending.append((sub, depth + 1))
            elif stat.S_ISLNK(mode):
                links.append(sub)
            elif stat.S_ISREG(mode) and not name.endswith(PART_SUFFIX):
                files_[sub] = attrs
    folders.sort(key=lambda d: (d.count("/"), d))
    return files_, folders, links, refused


def _local_state(path: Path) -> FileState | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return FileState.of(st) if stat.S_ISREG(st.st_mode) else None


def link_stays_inside(rel: str, target: str) -> bool:
    """Whether a link at rel (relative to the folder pulled) pointing at target leads to
    a place inside that folder: relative, and no `..` beyond its top."""
    if not target or target.startswith(("/", "\\")) or "\x00" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    return joined != ".." and not joined.startswith(("../", "/"))


def pull(conn: Any, guest_dir: str, host_dir: Path, root: Path | None = None) -> Copied:
    """Copy a guest folder's files that are new or changed into host_dir (made if
    needed), with their mtimes and modes; relative symlinks that stay inside it are made
    again. Files that cannot be read are listed in `Copied.failed`, the others still come.

    The guest is not trusted: root (the work dir) and the folders below it are made real
    folders (a link found there is replaced, never written through), names are checked,
    and a link that would lead out of host_dir is not made (listed in `failed`)."""
    sftp = open_sftp(conn)
    started = time.monotonic()
    done = Copied()
    try:
        remote_files, folders, links, refused = _walk(sftp, guest_dir)
    except OSError as e:
        raise SyncError(f"cannot list the guest's {guest_dir}: {type(e).__name__}: {e}") from None
    done.failed += refused
    try:
        if root is not None:
            host_dir = files.real_dir(root, host_dir.relative_to(root).parts)
        else:
            host_dir.mkdir(parents=True, exist_ok=True)
        for d in folders:
            files.real_dir(host_dir, d)
    except (OSError, ValueError) as e:
        raise SyncError(f"cannot make the folders of {host_dir}: {e}") from None
    remote = {rel: FileState.of(a) for rel, a in remote_files.items()}
    fetch = plan_pull(remote, {rel: _local_state(host_dir / rel) for rel in remote})
    done.unchanged = len(remote) - len(fetch)
    for rel in fetch:
        dest = host_dir / rel
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PART_SUFFIX, dir=dest.parent)
            os.close(fd)
            try:
                sftp.get(_join(guest_dir, rel), tmp)
                os.chmod(tmp, remote[rel].mode)
                os.utime(tmp, (remote[rel].mtime, remote[rel].mtime))
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as e:
            done.failed.append(f"{guest_dir}/{rel}: {e.strerror or e}")
            continue
        done.files += 1
        done.bytes += remote[rel].size
    for rel in links:
        try:
            target = sftp.readlink(_join(guest_dir, rel))
        except OSError as e:
            done.failed.append(f"{guest_dir}/{rel}: {e.strerror or e}")
            continue
        if not link_stays_inside(rel, target or ""):
            done.failed.append(f"{guest_dir}/{rel}: a link to {target!r}, out of the folder")
            continue
        try:
            make_link(target, host_dir / rel)
        except OSError as e:  # Windows without the symlink privilege
            done.failed.append(f"{guest_dir}/{rel} (a link to {target}): {e.strerror or e}")
    done.seconds = time.monotonic() - started
    return done


def make_link(target: str, link: Path) -> None:
    """link -> target, replaced atomically."""
    tmp = link.with_name(f".{link.name}{PART_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


# --- what the tasks copy ------------------------------------------------------------


def roots_of(settings: Any) -> dict[str, Path]:
    """Guest root -> host folder: the three folders that shares would show."""
    return {guest: host for guest, host, _access in settings.mounts()}


def stage(conn: Any, settings: Any, guest_paths: Iterable[str]) -> Copied:
    """Push the host files behind `guest_paths` (under /app, /target or /work) into the
    guest; one line says how much went."""
    roots = roots_of(settings)
    total = Copied()
    for root, rels in split_guest_paths(guest_paths, roots).items():
        total.add(push(conn, roots[root], root, rels))
    say(f"copied to the guest: {total.describe()}")
    return total


def claim(conn: Any, user: str, guest_paths: Sequence[str]) -> None:
    """Make guest files the runner (root) wrote readable by the SFTP user: its own."""
    if not guest_paths:
        return
    argv = ["chown", "-R", f"{user}:", "--", *guest_paths]
    result = guest.run_argv(conn, argv, sudo=True, hide=True, in_stream=False)
    if result.exited:
        warn(f"could not take over {', '.join(guest_paths)} in the guest: {result.stderr.strip()}")


def quietly(what: str, action: Any) -> TaskError | None:
    """Run action(); a failure is said (not raised), since it comes after the run whose
    own outcome matters more, and returned for the caller to end with."""
    try:
        action()
    except TaskError as e:
        warn(f"{what}: {e}")
        return e
    except Exception as e:  # noqa: BLE001 (a lost connection raises several kinds)
        error = SyncError(f"{type(e).__name__}: {e}")
        warn(f"{what}: {error}")
        return error
    return None
