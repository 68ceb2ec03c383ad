"""The guest's saved state: `vm.down` saves the running guest to a file beside its
disk, and the next `vm.up` resumes it in seconds instead of booting (issue 9).

The rules it keeps:
- Only a guest with private RAM and no share in use can be saved. vhost-user-fs
  (virtiofs) cannot migrate and needs shared memory, which also makes a restore slow
  (7.1 s against 0.5 s measured); a mounted 9p export blocks migration. So a 9p guest
  is saved with /app, /target and /work unmounted, and they are mounted after.
- The memory belongs to one moment of the disk. QEMU stops the guest, writes the
  state, flushes and quits, so the disk is frozen with it; the disk's size and mtime
  are recorded, and a disk that changed since is never paired with the state. The
  state is deleted before the resumed guest runs: it is used once.
- The state is bound to what the guest was started with: QEMU's command line (but the
  host's SSH port), QEMU's version, the base image's files and the seed. Any change,
  a failed restore, or `--recreate`, and the VM boots instead, saying why.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import process, qmp
from .ports import LOOPBACK
from .qemu import Address
from .state import StateDir

FORMAT = 1
# Bytes per second; QEMU's default cap of 32 MiB/s would make a save of a 2 GiB guest
# with a few hundred MB in use take ten seconds for no reason (the guest is stopped).
UNLIMITED_BANDWIDTH = 100 << 30
# How long writing a guest's state may take: its memory in use (hundreds of MB) to a
# local file, seconds when all is well; a stuck migration is given up, not waited on.
SAVE_TIMEOUT = 300.0
# Loading a saved state: the same bytes read back, seconds when all is well.
RESTORE_TIMEOUT = 120.0
# After a restore: until the guest agent answers, and the shares are mounted again.
REFRESH_TIMEOUT = 60.0
# Connecting to the guest agent of a guest that runs: its socket is QEMU's own.
AGENT_CONNECT_TIMEOUT = 5.0
# One agent command of a guest just resumed: its timers catch up at once, and under TCG
# on a loaded host an answer took over 5 s (guest-set-time, seen in CI).
AGENT_CALL_AFTER_RESTORE = 30.0
# `sync; umount` of the shares: the guest's dirty pages go to the host first.
UNMOUNT_TIMEOUT = 30.0
# Fresh host randomness mixed into a resumed guest's pool: 512 bits, more than the 256
# the kernel's generator is seeded with.
ENTROPY_BYTES = 64


# QEMU waits for a saved state (`migrate-incoming`) and keeps the guest paused after
# it, so the state can be deleted before the guest runs and moves its disk on.
RESUME_ARGS = ("-S", "-incoming", "defer")


class SaveFailed(Exception):
    pass


class RestoreFailed(Exception):
    pass


@dataclass(frozen=True)
class Saved:
    seconds: float
    size: int


def file_identity(path: str | Path | None) -> list[int] | None:
    """(size, mtime in ns) of a file; None when there is none."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def normalised_argv(argv: list[str], ports: dict[str, int]) -> list[str]:
    """QEMU's command line without what may change between a save and a restore: the
    host's TCP ports (SSH; QMP and the guest agent on Windows), any free one will do."""
    out = []
    for arg in argv:
        for name, port in ports.items():
            arg = arg.replace(f"{LOOPBACK}:{port}", f"{LOOPBACK}:<{name}>")
            arg = re.sub(rf"\bport={port}\b", f"port=<{name}>", arg)
        out.append(arg)
    return out


def fingerprint(
    argv: list[str], ports: dict[str, int], version: str, base_files: list[str], seed_id: str
) -> dict[str, Any]:
    """Everything a saved state is bound to, as plain data to compare. `base_files`:
    the base image's disk, kernel, initrd and firmware code (read-only to the guest)."""
    return {
        "argv": normalised_argv(argv, ports),
        "qemu_version": version,
        "base_files": {str(p): file_identity(p) for p in base_files},
        "seed": seed_id,
    }


def difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why a state saved with `saved` cannot be resumed as `now`; None when it can."""
    if saved.get("qemu_version") != now["qemu_version"]:
        return f"QEMU changed ({saved.get('qemu_version')} -> {now['qemu_version']})"
    if saved.get("base_files") != now["base_files"]:
        return "the base image changed"
    if saved.get("seed") != now["seed"]:
        return "the cloud-init seed changed"
    old, new = saved.get("argv", []), now["argv"]
    if old != new:
        changed = sorted(set(old) ^ set(new))
        return "the guest's hardware changed (" + " / ".join(changed[:4]) + ")"
    return None


# --- on disk ---------------------------------------------------------------------


def read(state: StateDir) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, None) of a usable-looking saved state; (None, why) when there is one
    that cannot be used; (None, None) when there is none."""
    if not state.saved_meta.exists():
        return None, ("a state file without its record" if state.saved_state.exists() else None)
    try:
        meta = json.loads(state.saved_meta.read_text())
    except (OSError, ValueError) as e:
        return None, f"its record is unreadable ({e})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None, "its record is from another version of this tool"
    if file_identity(state.saved_state) is None:
        return None, "the state file is missing"
    if state.saved_state.stat().st_size != meta.get("state_bytes"):
        return None, "the state file is truncated or was changed"
    if file_identity(state.disk) != meta.get("disk"):
        return None, "the disk changed since the state was saved"
    if file_identity(state.efi_vars) != meta.get("efi_vars"):
        return None, "the firmware's variables changed since the state was saved"
    return meta, None


def discard(state: StateDir) -> bool:
    """Delete the saved state; True when there was one."""
    had = False
    for path in (state.saved_meta, state.saved_state, _partial(state), _partial_meta(state)):
        if path.exists():
            had = True
            path.unlink(missing_ok=True)
    return had


# --- save ------------------------------------------------------------------------


def _partial(state: StateDir) -> Path:
    return state.root / "saved-state.partial"


def _partial_meta(state: StateDir) -> Path:
    return state.root / "saved-state.json.partial"


def migration_uri(path: Path, version: str, write: bool) -> str:
    """Where QEMU writes or reads the state: `file:` from QEMU 8.2 (also on Windows,
    which has no `cat`), else `cat` through the shell that `exec:` runs."""
    nums = re.findall(r"\d+", version)[:2]
    if len(nums) == 2 and (int(nums[0]), int(nums[1])) >= (8, 2):
        return f"file:{path}"
    return f"exec:cat {'> ' if write else ''}{shlex.quote(str(path))}"


def unmount_shares(qga: Address, guest_paths: list[str]) -> None:
    """Unmount the shares in the guest through its agent, so no 9p export is in use."""
    script = "sync; umount " + " ".join(shlex.quote(p) for p in guest_paths)
    try:
        with qmp.guest_agent(qga, timeout=AGENT_CONNECT_TIMEOUT) as agent:
            rc = agent.run(["/bin/sh", "-c", script], timeout=UNMOUNT_TIMEOUT)
    except qmp.GuestAgentError as e:
        raise SaveFailed(str(e)) from None
    if rc != 0:
        raise SaveFailed(
            "the shares could not be unmounted in the guest (a process there holds a "
            "file under /app, /target or /work open)"
        )


def _migration_status(qmp_address: Address) -> dict[str, Any]:
    return qmp.execute(qmp_address, "query-migrate").get("return", {})


def wait_migration(qmp_address: Address, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _migration_status(qmp_address)
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise RestoreFailed(info.get("error-desc", f"migration {status}"))
        time.sleep(0.05)
    raise RestoreFailed(f"the migration did not finish in {timeout:.0f} s")


def write_stopped(qmp_address: Address, dest: Path, version: str, timeout: float) -> None:
    """Stop the guest and write its state to `dest`. The guest stays stopped, its
    disks flushed and released by QEMU until a `cont`. Raises RestoreFailed (or
    OSError, ValueError: QMP) with the guest stopped."""
    params = {"max-bandwidth": UNLIMITED_BANDWIDTH}
    qmp.execute(qmp_address, "migrate-set-parameters", arguments=params)
    qmp.execute(qmp_address, "stop")
    uri = migration_uri(dest, version, write=True)
    reply = qmp.execute(qmp_address, "migrate", arguments={"uri": uri})
    if "error" in reply:
        raise RestoreFailed(reply["error"].get("desc", "migrate refused"))
    wait_migration(qmp_address, timeout)


def save(
    state: StateDir,
    qmp_address: Address,
    pid: int,
    fp: dict[str, Any],
    extra: dict,
    timeout: float = SAVE_TIMEOUT,
) -> Saved:
    """Save the stopped guest of QEMU `pid` to the state dir and stop QEMU.

    The shares must be unmounted already. On failure the guest runs again and
    SaveFailed says why; nothing half-written is left.
    """
    started = time.monotonic()
    tmp = _partial(state)
    discard(state)
    try:
        write_stopped(qmp_address, tmp, fp["qemu_version"], timeout)
    except (OSError, ValueError, RestoreFailed) as e:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            qmp.execute(qmp_address, "cont")
        raise SaveFailed(str(e)) from None
    # The guest is stopped and its disk flushed; QEMU quits so nothing writes to it.
    process.quit_now(pid, qmp_address, str(state.root))
    meta = {
        "format": FORMAT,
        "saved_at": time.time(),
        "state_bytes": tmp.stat().st_size,
        "disk": file_identity(state.disk),
        # Firmware variables live on a flash drive: frozen and paired like the disk.
        "efi_vars": file_identity(state.efi_vars),
        "fingerprint": fp,
        **extra,
    }
    meta_tmp = _partial_meta(state)
    meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, state.saved_state)
    os.replace(meta_tmp, state.saved_meta)
    return Saved(time.monotonic() - started, meta["state_bytes"])


# --- restore ---------------------------------------------------------------------


def restore(
    source: Path, qmp_address: Address, version: str, timeout: float = RESTORE_TIMEOUT
) -> None:
    """Load a saved state (a file QEMU wrote with `migrate`) into a QEMU started with
    `-incoming defer -S`; the guest stays paused (`cont` runs it)."""
    uri = migration_uri(source, version, write=False)
    try:
        reply = qmp.execute(qmp_address, "migrate-incoming", arguments={"uri": uri})
        if "error" in reply:
            raise RestoreFailed(reply["error"].get("desc", "migrate-incoming refused"))
        wait_migration(qmp_address, timeout)
    except (OSError, ValueError) as e:
        raise RestoreFailed(str(e)) from None


def run_guest(qmp_address: Address) -> None:
    """`cont` a restored guest; RestoreFailed when QEMU refuses."""
    reply = qmp.execute(qmp_address, "cont")
    if "error" in reply:
        raise RestoreFailed(reply["error"].get("desc", "cont failed"))


def refresh_guest(qga: Address, remount: str, timeout: float = REFRESH_TIMEOUT) -> None:
    """After a restore: the guest's clock to the host's, fresh entropy, the shares
    mounted again (`remount`, shell; empty: none). All through the guest agent, no SSH handshake;
    one process in the guest, since each costs 0.1-0.6 s under TCG."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            agent = qmp.guest_agent(qga, timeout=AGENT_CONNECT_TIMEOUT)
            break
        except qmp.GuestAgentError as e:
            if time.monotonic() > deadline:
                raise RestoreFailed(f"the resumed guest does not answer: {e}") from None
            time.sleep(0.1)
    with agent:
        agent.settimeout(max(AGENT_CALL_AFTER_RESTORE, deadline - time.monotonic()))
        try:
            # Mixed into the pool (not credited): a resumed guest must not repeat the
            # random numbers it would have drawn from the saved pool.
            handle = agent.call("guest-file-open", path="/dev/urandom", mode="w")
            agent.call("guest-file-write", handle=handle, buf_b64=_b64(os.urandom(ENTROPY_BYTES)))
            agent.call("guest-file-close", handle=handle)
            # The guest's clock stood still while it was saved.
            agent.set_time()
            if remount and agent.run(["/bin/sh", "-c", remount], timeout=timeout) != 0:
                raise RestoreFailed("mounting the shares failed")
        except qmp.GuestAgentError as e:
            raise RestoreFailed(str(e)) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
