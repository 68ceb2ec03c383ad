"""Host folders shared into the guest: virtiofs (one virtiofsd per share) or 9p; or, with
`QEMU_VM_FS=none`, not shared at all: guest-local folders that sync.py fills by copying."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import VmUnavailable
from ..settings import FsMode
from ..ui import say
from .qemu import Share

VIRTIOFSD_PLACES = (
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/lib/virtiofsd",
    "/usr/local/libexec/virtiofsd",
)
TAGS = {"/app": "app", "/target": "target", "/work": "work"}
# Marks our lines in the guest's /etc/fstab (an x- option mount ignores), so they are
# replaced, never duplicated.
FSTAB_MARK = "x-patchbay-vm"
# Dirty pages of a 9p share with cache=mmap reach the host when written back: every
# second and after a second, not the kernel's 5 s and 30 s.
WRITEBACK_SYSCTL = {"vm.dirty_writeback_centisecs": 100, "vm.dirty_expire_centisecs": 100}
# 9p's largest message: the kernel's virtio transport caps it near 512 KiB anyway, and
# bigger messages mean fewer round trips for large files.
NINEP_MSIZE = 512 << 10
# How long a virtiofsd may take to make its socket: it does so as it starts.
VIRTIOFSD_START_TIMEOUT = 10.0
# Made (on the guest's tmpfs /run, so gone after any guest reboot) by the mount script of
# fs mode none: the guest agent's warm-up check then passes without any mount.
COPIED_MARK = "/run/patchbay-vm-copied-folders"


@dataclass(frozen=True)
class Virtiofsd:
    path: str
    flavour: str  # "rust" (virtiofsd >= 1.0) or "c" (QEMU's old one, Debian 12)
    readonly_flag: bool = False


def find_virtiofsd(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("virtiofsd")
    if found:
        return found
    return next((p for p in VIRTIOFSD_PLACES if os.access(p, os.X_OK)), None)


def detect_flavour(path: str) -> Virtiofsd | None:
    """Tell the Rust virtiofsd from QEMU's C one by their help text (SPEC 9.3)."""
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout + out.stderr
    if "--shared-dir" in text:
        return Virtiofsd(path, "rust", readonly_flag="--readonly" in text)
    if "source=" in text:
        return Virtiofsd(path, "c")
    return None


def choose_fs_mode(
    requested: FsMode, virtiofsd_bin: str | None
) -> tuple[FsMode, Virtiofsd | None, str]:
    """(fs mode, the virtiofsd to use, why) for the `QEMU_VM_FS` request."""
    if requested in (FsMode.NINEP, FsMode.AUTO):
        # auto: 9p, because a 9p guest can be saved by `vm.down` and resumed by `vm.up`
        # in seconds (a virtiofs guest cannot: vhost-user-fs does not migrate), and with
        # cache=mmap it moves files within 2x of virtiofs under TCG (reads 85 MB/s,
        # writes 39; virtiofs 21-97 and 48-58 measured here).
        return FsMode.NINEP, None, f"QEMU_VM_FS={requested}"
    if requested == FsMode.NONE:
        why = "QEMU_VM_FS=none: no shared folders; tasks copy files to the guest and back (SFTP)"
        say(f"files are copied to and from the guest, not shared ({why.split(': ', 1)[1]})")
        return FsMode.NONE, None, why
    path = find_virtiofsd(virtiofsd_bin)
    daemon = detect_flavour(path) if path else None
    why = ""
    if daemon and daemon.flavour == "c" and os.geteuid() != 0:
        why = f"{path} is QEMU's C virtiofsd, which needs root"
        daemon = None
    elif path and daemon is None:
        why = f"{path} does not look like a virtiofsd"
    elif path is None:
        why = "no virtiofsd found (set QEMU_VM_VIRTIOFSD_BIN)"
    if daemon:
        return FsMode.VIRTIOFS, daemon, f"{daemon.flavour} virtiofsd at {daemon.path}"
    if requested == FsMode.VIRTIOFS:
        raise VmUnavailable(f"QEMU_VM_FS=virtiofs, but {why}")
    return FsMode.NINEP, None, why


def virtiofsd_argv(daemon: Virtiofsd, share: Share) -> list[str]:
    if daemon.flavour == "rust":
        argv = [
            daemon.path,
            f"--socket-path={share.socket}",
            f"--shared-dir={share.host_path}",
            "--cache=auto",
            # The sandbox needs privileges we may not have; the guest is ours anyway.
            "--sandbox=none",
        ]
        if share.readonly and daemon.readonly_flag:
            argv.append("--readonly")
        return argv
    # QEMU's C virtiofsd: -o options, a chroot sandbox as root.
    return [
        daemon.path,
        f"--socket-path={share.socket}",
        "-o",
        f"source={share.host_path}",
        "-o",
        "cache=auto",
        "-o",
        "sandbox=chroot",
    ]


def start_virtiofsd(
    daemon: Virtiofsd,
    share: Share,
    log: Path,
    timeout: float = VIRTIOFSD_START_TIMEOUT,
    on_start: Callable[[int], object] | None = None,
) -> int:
    """Start one virtiofsd in its own session; wait for its socket. Returns its PID.

    `on_start(pid)` runs as soon as the process exists, so a caller can own it before
    the wait (which Ctrl-C may interrupt)."""
    assert share.socket is not None
    share.socket.unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            virtiofsd_argv(daemon, share),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this task, like the daemonised QEMU
        )
    if on_start:
        on_start(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if share.socket.exists():
            return proc.pid
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise VmUnavailable(
                f"virtiofsd for {share.host_path} exited with {proc.returncode}:\n"
                + "\n".join(tail)
            )
        time.sleep(0.05)
    proc.kill()
    raise VmUnavailable(f"virtiofsd for {share.host_path} made no socket in {timeout:.0f} s")


def make_shares(
    mounts: list[tuple[str, Path, str]], fs_mode: FsMode, state_dir: Path
) -> list[Share]:
    if fs_mode == FsMode.NONE:
        return []
    return [
        Share(
            tag=TAGS[guest],
            host_path=host,
            readonly=access == "ro",
            socket=state_dir / f"virtiofs-{TAGS[guest]}.sock"
            if fs_mode == FsMode.VIRTIOFS
            else None,
        )
        for guest, host, access in mounts
    ]


def mount_options(fs_mode: FsMode, access: str) -> tuple[str, str]:
    """(fstype, mount options) of one share.

    9p caches, measured in a TCG guest with 50-200 MB files: `mmap` for every share
    (reads 55-85 MB/s, writes 39), where `readahead` wrote 4 MB/s and `none` read 13;
    `loose` (reads 209) does not see files the host changed or replaced. `mmap` writes
    through the guest's page cache, so the host sees /work's writes when the kernel
    writes them back: WRITEBACK_SYSCTL makes that within about a second (the host
    reads logs live). msize: NINEP_MSIZE.
    """
    if fs_mode == FsMode.NINEP:
        return "9p", f"{access},trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache=mmap"
    return "virtiofs", access


# Every process the guest starts costs 0.1-0.5 s under TCG, and a new VM runs these
# lines while it boots: what is already as wanted is found with shell builtins only.
_MOUNTED = (
    'pb_mounted() { while read -r _ point _; do [ "$point" != "$1" ] || return 0; '
    "done < /proc/self/mounts; return 1; }"
)


def mount_script(mounts: list[tuple[str, Path, str]], fs_mode: FsMode, user: str) -> str:
    """Shell lines (run as root in the guest) that mount the shares; idempotent.

    The mounts also go into /etc/fstab (`nofail`), so the guest keeps them by itself
    across its own reboots, and a warm `up` need not open SSH to make them.
    """
    if fs_mode == FsMode.NONE:
        return copied_folders_script(mounts, user)
    lines = [_MOUNTED]
    if fs_mode == FsMode.NINEP:
        lines.append("[ -d /sys/module/9pnet_virtio ] || modprobe -q 9p 9pnet_virtio || true")
        # Kept in sysctl.d so a reboot of the guest keeps it too; set now through /proc.
        conf = "\n".join(f"{k} = {v}" for k, v in WRITEBACK_SYSCTL.items())
        lines.append(f"printf '%s\\n' {shlex.quote(conf)} > /etc/sysctl.d/60-patchbay-work.conf")
        for key, value in WRITEBACK_SYSCTL.items():
            proc = "/proc/sys/" + key.replace(".", "/")
            lines.append(f"{{ echo {value} > {proc}; }} 2>/dev/null || true")
    fstab = []
    for guest, _host, access in mounts:
        tag = TAGS[guest]
        fstype, opts = mount_options(fs_mode, access)
        g = shlex.quote(guest)
        lines.append(
            f"[ -d {g} ] || mkdir -p {g}; pb_mounted {g} || mount -t {fstype} -o {opts} {tag} {g}"
        )
        fstab.append(f"{tag} {guest} {fstype} {opts},nofail,{FSTAB_MARK} 0 0")
    lines.append(fstab_script(fstab))
    # /work must be writable by the guest user too, whatever uid owns it on the host
    # (setpriv where there is one: su's PAM session alone takes 0.5 s under TCG).
    u = shlex.quote(user)
    lines.append(
        "if command -v setpriv > /dev/null; then "
        f"setpriv --reuid={u} --regid={u} --init-groups test -w /work; "
        f"else su -s /bin/sh {u} -c 'test -w /work'; fi || chmod a+rwx /work"
    )
    return "\n".join(lines)


def fstab_script(lines: list[str], fstab: str = "/etc/fstab") -> str:
    """Shell lines that make the FSTAB_MARK lines of `fstab` exactly `lines`, keeping the
    others; the file is replaced (written beside, renamed) only when that changes it."""
    want = shlex.quote("".join(f"{line}\n" for line in lines)) if lines else ""
    f = shlex.quote(fstab)
    return f"""[ -e {f} ] || : > {f}
old= keep=
while IFS= read -r line || [ -n "$line" ]; do
  old="$old$line
"
  case "$line" in *{FSTAB_MARK}*) ;; *) keep="$keep$line
" ;; esac
done < {f}
new="$keep"{want}
if [ "$new" != "$old" ]; then printf '%s' "$new" > {f}.patchbay; mv {f}.patchbay {f}; fi"""


def copied_folders_script(mounts: list[tuple[str, Path, str]], user: str) -> str:
    """fs mode none: /app, /target and /work are plain guest folders owned by the guest
    user (sync.py copies into them as that user over SFTP); idempotent.

    Our fstab lines of an earlier boot with shares go (their devices are absent now), and
    COPIED_MARK tells the warm-up check that this boot has no mounts to look for.
    """
    u = shlex.quote(user)
    lines = [fstab_script([])]
    for guest, _host, _access in mounts:
        g = shlex.quote(guest)
        lines.append(f"mkdir -p {g}; chown {u}: {g}")
    lines.append(f"touch {COPIED_MARK}")
    return "\n".join(lines)


def all_mounted(mount_table: str, mounts: list[tuple[str, Path, str]]) -> bool:
    """Whether the guest's mount table (the text of /proc/self/mounts, which the guest
    agent reads without starting a process) lists every share's guest path."""
    points = set()
    for line in mount_table.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            points.add(fields[1].replace("\\040", " "))  # the kernel escapes spaces
    return all(guest in points for guest, _h, _a in mounts)
