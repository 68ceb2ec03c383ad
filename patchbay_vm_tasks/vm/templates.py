"""Templates: a new VM starts from a guest saved early in the boot of its image (issue 9).

Booting our image under TCG takes about a minute, and most of it is the same for every
VM: kernel, initramfs, systemd, udev, cloud-init importing itself. Our images hold a
gate (guest-image/patchbay-gate) where the boot waits for its cloud-init seed, before
cloud-init has read anything of the instance. So a new VM starts without its seed:
- no template of its image and hardware yet: it boots to the gate, is saved there
  (memory and disk: the template), and goes on;
- else: its disk is a copy of the template's, its memory the template's, and it goes
  on from the gate.
Either way its own seed is then hot-plugged, and cloud-init configures it as on any
first boot (the gate renews the clock and the random state first).

The rules:
- Only onto the same hardware: the key hashes QEMU's command line with every path and
  port of one VM replaced (QEMU's own path too), QEMU's version, the base image's
  files and the disk's size.
- Memory and disk are one moment: the disk is copied while the guest is stopped after
  its state was written, the template is written under a temporary name and renamed,
  and its files' sizes are checked before use.
- A restore that fails deletes the template; the VM boots from power-on instead (and
  makes a new one). Not for virtiofs (vhost-user-fs cannot migrate) nor for images
  without the gate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from . import qemu, qmp, savedstate

FORMAT = 1
GATE_WAITING = b"patchbay-gate: waiting for the seed"
# Templates kept per cache (each is the guest's memory in use, ~300 MB, and a disk of
# tens of MB); the least recently used go first.
KEEP = 4


@dataclass(frozen=True)
class Template:
    root: Path

    disk = property(lambda self: self.root / "disk.qcow2")
    state = property(lambda self: self.root / "state")
    meta = property(lambda self: self.root / "template.json")


def key(spec: qemu.QemuSpec, version: str, disk_gb: int, base_files: list[Path]) -> str:
    """What a template is bound to: the seedless command line of `spec` with its paths
    and ports replaced by one VM's own, QEMU's version, the base files, the disk size."""
    here = Path("/vm")
    shares = tuple(
        dataclasses.replace(s, host_path=here / f"share-{s.tag}", socket=None) for s in spec.shares
    )
    canonical = dataclasses.replace(
        spec,
        # Where QEMU lies is not what it restores: its version (below) is.
        qemu_bin="qemu",
        name="template",
        disk=here / "disk.qcow2",
        seed=here / "seed.iso",
        ssh_port=1,
        pidfile=here / "qemu.pid",
        serial_log=here / "serial.log",
        qmp_socket=here / "qmp.sock",
        qga_socket=here / "qga.sock" if spec.qga_socket else None,
        qmp_port=1 if spec.qmp_port else None,
        qga_port=1 if spec.qga_port else None,
        shares=shares,
        extra=(),
        seed_attached=False,
    )
    data = [
        FORMAT,
        qemu.build_argv(canonical),
        version,
        {str(p): savedstate.file_identity(p) for p in base_files},
        disk_gb,
    ]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def find(cache: Path, name: str) -> Template | None:
    """The complete template `name` in `cache`, or None."""
    tpl = Template(cache / name)
    try:
        meta = json.loads(tpl.meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if savedstate.file_identity(tpl.state) is None:
        return None
    if tpl.state.stat().st_size != meta.get("state_bytes"):
        return None
    if savedstate.file_identity(tpl.disk) != meta.get("disk"):
        return None
    with contextlib.suppress(OSError):
        os.utime(tpl.meta)  # used: kept longer by `prune`
    return tpl


def discard(tpl: Template) -> None:
    shutil.rmtree(tpl.root, ignore_errors=True)


def copy_disk(tpl: Template, dest: Path) -> None:
    """The template's disk as a new VM's own (a qcow2 on the same base image)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.copyfile(tpl.disk, tmp)
    os.replace(tmp, dest)


def wait_for_gate(
    serial_log: Path,
    alive: Callable[[], bool],
    timeout: float,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    """Wait until the guest says it waits at the gate (on its serial console); the
    seconds waited. Raises TimeoutError, or ChildProcessError when QEMU is gone."""
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        with contextlib.suppress(OSError):
            if GATE_WAITING in serial_log.read_bytes():
                return waited
        if not alive():
            raise ChildProcessError("QEMU exited before the guest reached the gate")
        if waited > timeout:
            raise TimeoutError(f"the guest did not reach the gate in {timeout:.0f} s")
        if on_progress:
            on_progress(waited)
        time.sleep(0.1)


def save(
    cache: Path,
    name: str,
    qmp_address: qemu.Address,
    disk: Path,
    version: str,
    info: dict[str, Any],
) -> Template | None:
    """Save the guest of `qmp_address`, waiting at the gate, as template `name` and let it run
    on. None when another process is saving it already. The guest always runs again;
    raises savedstate.SaveFailed with nothing half-written left."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(cache / f".{name}.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        return None
    try:
        existing = find(cache, name)
        if existing:
            return existing
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        tpl = Template(work)
        started = time.monotonic()
        try:
            try:
                savedstate.write_stopped(
                    qmp_address, tpl.state, version, timeout=savedstate.SAVE_TIMEOUT
                )
                # Stopped and its disk released by QEMU: the disk of this very moment.
                shutil.copyfile(disk, tpl.disk)
            finally:
                with contextlib.suppress(OSError, ValueError):
                    qmp.execute(qmp_address, "cont")
            meta = {
                "format": FORMAT,
                "created_at": time.time(),
                "state_bytes": tpl.state.stat().st_size,
                "disk": savedstate.file_identity(tpl.disk),
                "save_seconds": round(time.monotonic() - started, 2),
                **info,
            }
            tpl.meta.write_text(json.dumps(meta, indent=2) + "\n")
            final = cache / name
            discard(Template(final))  # an incomplete one left by a crash
            os.replace(work, final)
            prune(cache, KEEP)
            return Template(final)
        except (OSError, ValueError, savedstate.RestoreFailed) as e:
            raise savedstate.SaveFailed(str(e)) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()


def prune(cache: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used templates; the ones deleted."""
    found = []
    for meta in cache.glob("*/template.json"):
        with contextlib.suppress(OSError):
            found.append((meta.stat().st_mtime, meta.parent))
    found.sort(reverse=True)
    gone = [root for _, root in found[keep:]]
    for root in gone:
        shutil.rmtree(root, ignore_errors=True)
    return gone
