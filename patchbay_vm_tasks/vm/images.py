"""Base images: the Debian cloud image (downloaded, verified) or one built with mmdebstrap.

Cache: the user data dir (`~/.local/share/patchbay/qemu-images/` on Linux),
shared by every project and VM. Downloaded images are stored under the first
16 hex digits of their sha512, so a refreshed `latest` never overwrites the
backing file of an existing overlay (SPEC 9.4).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from filelock import FileLock

from .. import packagedata
from ..downloads import (
    Unreachable,
    check_due,
    download,
    fetch_text,
    mark_checked,
    sha512_file,
    stamp_for,
)
from ..errors import TaskError, UsageError, VmUnavailable
from ..ui import say, spinner, warn
from . import binfmt, provision

FALLBACK_SUITE = "trixie"

# The guest carries every tool of SPEC 4.8, so first boot provisions nothing.
GUEST_PACKAGES = [
    "systemd-sysv",
    "udev",
    "kmod",
    "systemd-resolved",
    "openssh-server",
    # cloud-init writes systemd-networkd files itself (below): netplan's Python CLI
    # took 9.4 s of the first boot under TCG to render the same file.
    "cloud-init",
    "sudo",
    "ca-certificates",
    "e2fsprogs",
    "procps",
    "initramfs-tools",
    "zstd",
    # The network tools and the guest agent: the list provisioning installs elsewhere.
    *provision.PACKAGES.split(),
]

# Written before the packages are installed, so the kernel's package builds a small
# initramfs: only what mounts ext4 on a virtio disk (with the default, MODULES=most,
# udev in the initramfs loaded drivers for 13 s under TCG).
_SETUP = r"""set -e
root="${1:?}"; [ "$root" != / ]
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
echo 'MODULES=list' > "$root/etc/initramfs-tools/conf.d/patchbay.conf"
printf '%s\n' '#!/bin/sh' '[ "$1" = prereqs ] && exit 0' \
  '. /usr/share/initramfs-tools/hook-functions' \
  'manual_add_modules virtio_pci virtio_blk ext4 crc32c_generic' \
  > "$root/etc/initramfs-tools/hooks/patchbay"
chmod 755 "$root/etc/initramfs-tools/hooks/patchbay"
"""

# Files the build writes into the guest tree. Constant text: no user data reaches a shell.
_CUSTOMIZE = r"""set -e
root="${1:?}"; [ "$root" != / ]
# The one initramfs, should no package have triggered its making (INITRD=No in `_build`).
ls "$root"/boot/initrd.img-* > /dev/null 2>&1 || chroot "$root" update-initramfs -c -k all
rm -f "$root"/etc/ssh/ssh_host_*
echo '/dev/vda / ext4 defaults,discard,errors=remount-ro 0 1' > "$root/etc/fstab"
printf '%s\n' sch_netem 9p 9pnet_virtio virtiofs > "$root/etc/modules-load.d/patchbay.conf"
printf '%s\n' net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
  kernel.unprivileged_userns_clone=1 user.max_user_namespaces=65536 \
  > "$root/etc/sysctl.d/90-patchbay.conf"
printf '%s\n' 'datasource_list: [NoCloud, None]' 'system_info:' '  network:' \
  '    renderers: [networkd]' '    activators: [networkd]' \
  > "$root/etc/cloud/cloud.cfg.d/90-patchbay.cfg"
# netplan enabled networkd before; cloud-init's own renderer does not.
chroot "$root" systemctl enable --quiet systemd-networkd.service
# cloud-init's network stage reads nothing from the network (the seed is a local
# disk), so it need not wait for DHCP: the shipped unit without that ordering (a
# drop-in cannot remove one). network-online.target still waits for the address.
for unit in cloud-init-network.service cloud-init.service; do
  src="$root/usr/lib/systemd/system/$unit"
  if [ -e "$src" ]; then
    sed '/^After=systemd-networkd-wait-online.service$/d' "$src" \
      > "$root/etc/systemd/system/$unit"
  fi
done
# The gate a template is saved at (copied in from guest-image/ before this hook).
chmod 755 "$root/usr/local/sbin/patchbay-gate"
chroot "$root" systemctl enable --quiet patchbay-gate.service
# Drivers udev would load for emulated hardware a test VM never uses (nested KVM
# from -cpu max, wireless, watchdog, mouse, ...): each costs time under TCG.
printf 'blacklist %s\n' kvm kvm_amd kvm_intel ccp cfg80211 psmouse pcspkr iTCO_wdt \
  i2c_i801 lpc_ich serio_raw > "$root/etc/modprobe.d/patchbay-blacklist.conf"
# cloud-init: the modules our seed uses and those a project's own user-data commonly
# does (write_files, runcmd, packages, scripts); none for hardware or services a test
# VM has not got (locale, keyboard, ntp, grub, keys to the console, ...).
printf '%s\n' \
  'cloud_init_modules: [seed_random, bootcmd, write_files, growpart, resizefs,' \
  '  set_hostname, update_hostname, update_etc_hosts, users_groups, ssh, set_passwords]' \
  'cloud_config_modules: [runcmd]' \
  'cloud_final_modules: [package_update_upgrade_install, write_files_deferred,' \
  '  scripts_per_once, scripts_per_boot, scripts_per_instance, scripts_user]' \
  > "$root/etc/cloud/cloud.cfg.d/91-patchbay-modules.cfg"
# Timers and services a throwaway test VM never needs cost no boot time masked.
for unit in e2scrub_all.timer e2scrub_reap.service apt-daily.timer \
    apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer getty@tty1.service \
    systemd-journal-catalog-update.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    systemd-network-generator.service modprobe@drm.service modprobe@efi_pstore.service \
    systemd-pstore.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
rm -f "$root/etc/hostname"
"""
# dpkg: no fsync per unpacked file (a failed build is thrown away whole), and no
# manuals, docs or translations, which a test VM never reads and which cost time to
# unpack and to copy into the disk, most under qemu-user for another arch.
DPKG_OPTIONS = [
    "force-unsafe-io",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
]
# Bump when the recipe changes outside the hooks below, so old builds are not reused.
RECIPE_VERSION = "4"

# Files copied into the guest tree as they are (plain, editable data beside the code),
# each to its folder in the guest.
GUEST_FILES_DIR = packagedata.path(packagedata.GUEST_IMAGE)
GUEST_FILES = {
    "patchbay-gate": "/usr/local/sbin",
    "patchbay-gate.service": "/etc/systemd/system",
    "wait-online-ipv4.conf": "/etc/systemd/system/systemd-networkd-wait-online.service.d",
    "ssh-no-config-test.conf": "/etc/systemd/system/ssh.service.d",
}
# On the kernel command line of our images: the boot waits at patchbay-gate for a seed.
GATE_PARAM = "patchbay.gate"


@dataclass(frozen=True)
class BaseImage:
    disk: Path
    format: str = "qcow2"
    kernel: Path | None = None  # direct kernel boot when set
    initrd: Path | None = None
    cmdline: str = ""
    # The image holds patchbay-gate (our debian:<suite> builds): a new VM can start
    # from a template saved at the gate (templates.py).
    gated: bool = False


def ensure_base_image(
    url: str, cache_dir: Path, arch: str, mirror: str, refresh: bool = False
) -> BaseImage:
    """Resolve QEMU_VM_IMAGE_URL to a local base image, downloading or building it.

    A cached download is used without touching the network, except that once a day
    (or with `refresh`) `SHA512SUMS` is asked whether a newer image was published.
    Local and downloaded files are checked to be disk images before anything boots.
    """
    if url.startswith("debian:"):
        return build_debian_image(url.split(":", 1)[1], arch, mirror, cache_dir)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser()
        if not path.is_file():
            raise UsageError(f"QEMU_VM_IMAGE_URL: no image file at {path}")
        return BaseImage(path.resolve(), inspect_image(path))
    if parsed.scheme not in ("http", "https"):
        raise UsageError(
            f"QEMU_VM_IMAGE_URL: {url!r} is not an http(s) URL, a file path or debian:<suite>"
        )
    try:
        path = cached_or_downloaded_image(url, cache_dir, refresh)
    except Unreachable as e:
        if debian_build_cached(FALLBACK_SUITE, arch, cache_dir):
            warn(f"{e}; using the cached debian:{FALLBACK_SUITE} guest image instead")
        elif not shutil.which("mmdebstrap"):
            raise VmUnavailable(
                f"{e}\nInstall mmdebstrap to build the guest image from a Debian mirror instead, "
                f"or set QEMU_VM_IMAGE_URL to a local image file."
            ) from None
        else:
            warn(f"{e}; building the guest image from Debian packages (debian:{FALLBACK_SUITE})")
        return build_debian_image(FALLBACK_SUITE, arch, mirror, cache_dir)
    return BaseImage(path, inspect_image(path))


def cached_or_downloaded_image(url: str, cache_dir: Path, refresh: bool = False) -> Path:
    """The image for `url`: the newest cached copy while its daily check is not due,
    else the one `SHA512SUMS` names now (downloaded when new)."""
    name = Path(urlparse(url).path).name
    stamp = stamp_for(cache_dir, url)
    cached = newest_cached(cache_dir, name)
    if cached and not check_due(stamp, refresh=refresh):
        say(f"using cached image {cached}")
        return cached
    try:
        path = download_verified_image(url, cache_dir)
    except Unreachable:
        if cached:
            mark_checked(stamp)  # offline: do not wait on the network again today
        raise
    mark_checked(stamp)
    return path


def newest_cached(cache_dir: Path, name: str) -> Path | None:
    """The most recently stored download named `name`. Downloads are renamed into the
    cache only when whole and verified, under their digest's folder, so no re-hash."""
    candidates = [
        p for p in cache_dir.glob(f"*/{name}") if re.fullmatch(r"[0-9a-f]{16}", p.parent.name)
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def parse_sha512sums(text: str, filename: str) -> str | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    return None


def download_verified_image(url: str, cache_dir: Path) -> Path:
    """The image at `url`, verified against `SHA512SUMS` from the same directory."""
    name = Path(urlparse(url).path).name
    sums_url = url.rsplit("/", 1)[0] + "/SHA512SUMS"
    try:
        expected = parse_sha512sums(fetch_text(sums_url), name)
    except Unreachable:
        # Offline: a cached copy that still matches the digest it was stored under will do.
        cached = _newest_verified(cache_dir, name)
        if cached:
            warn(f"cannot reach {sums_url} to look for a newer image; using cached image {cached}")
            return cached
        raise
    if expected is None:
        raise VmUnavailable(
            f"{sums_url} lists no checksum for {name}; refusing an unverified image"
        )
    path = cache_dir / expected[:16] / name
    with FileLock(str(cache_dir / f".{name}.lock")):
        if path.exists():
            if sha512_file(path) == expected:
                say(f"using cached image {path} (the newest published)")
                return path
            warn(f"cached {path} does not match its checksum; downloading it again")
            path.unlink()
        say(f"downloading {url}")
        try:
            download(url, path, expect_sha512=expected)
        except Unreachable:
            raise  # the caller may build the image instead
        except TaskError as e:
            raise VmUnavailable(str(e)) from None
    return path


def _newest_verified(cache_dir: Path, name: str) -> Path | None:
    candidates = sorted(cache_dir.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if sha512_file(path)[:16] == path.parent.name:
            return path
    return None


# Where a disk image shows what it holds (offsets in bytes).
MBR_SIGNATURE = (510, b"\x55\xaa")
GPT_SIGNATURE = (512, b"EFI PART")
EXT_MAGIC = (1080, b"\x53\xef")  # 0xEF53, little-endian, in the ext2/3/4 superblock
PROBE_BYTES = 1536


def image_format(path: Path) -> str:
    """The format `qemu-img info` sees in `path`; UsageError when it cannot read it."""
    return _qemu_img_info(path)["format"]


def _qemu_img_info(path: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output", "json", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise UsageError(f"{path}: not a disk image qemu-img can read: {out.stderr.strip()}")
    return json.loads(out.stdout)


def describe_boot_content(head: bytes) -> str | None:
    """What makes the first bytes of a disk bootable-looking, or None."""
    for what, (offset, magic) in (
        ("a GPT partition table", GPT_SIGNATURE),
        ("an MBR partition table", MBR_SIGNATURE),
        ("an ext filesystem", EXT_MAGIC),
    ):
        if head[offset : offset + len(magic)] == magic:
            return what
    return None


def _describe_bytes(head: bytes, size: int) -> str:
    if not head.strip(b"\0"):
        return f"a {size}-byte disk whose first {len(head)} bytes are zero: an empty disk"
    printable = all(32 <= b < 127 or b in b"\t\r\n" for b in head[:200])
    if printable:
        return f"{size} bytes of text starting {head[:40].decode('ascii')!r}"
    return f"{size} bytes of data starting {head[:16].hex(' ')}"


def _read_head(path: Path, fmt: str) -> bytes | None:
    """The first PROBE_BYTES of the guest-visible disk; None when they cannot be had cheaply."""
    if fmt == "raw":
        with open(path, "rb") as f:
            return f.read(PROBE_BYTES)
    with tempfile.TemporaryDirectory(prefix="pbvm-probe-") as tmp:
        out = Path(tmp) / "head.raw"
        argv = [
            "qemu-img", "dd", "-f", fmt, "-O", "raw",
            f"bs={PROBE_BYTES}", "count=1", f"if={path}", f"of={out}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            return None
        return out.read_bytes()


def inspect_image(path: Path) -> str:
    """The format of `path` after checking it is a usable disk image: readable by
    qemu-img, not empty, and with a partition table or a filesystem at the start.
    Raises UsageError (exit 2) saying what was found, before anything boots."""
    info = _qemu_img_info(path)
    fmt = info.get("format", "?")
    size = int(info.get("virtual-size") or 0)
    if size <= 0:
        raise UsageError(f"QEMU_VM_IMAGE_URL: {path} is a {fmt} image of size 0")
    head = _read_head(path, fmt)
    if head is None:
        return fmt  # cannot look inside cheaply; qemu-img accepts it
    if describe_boot_content(head) is None:
        if fmt == "raw":
            size = path.stat().st_size  # qemu-img rounds a raw file up to whole sectors
        raise UsageError(
            f"QEMU_VM_IMAGE_URL: {path} is not a usable disk image: qemu-img reads it as {fmt}, "
            f"but it has no partition table and no filesystem ({_describe_bytes(head, size)})"
        )
    return fmt


def build_key(suite: str, arch: str) -> str:
    # The hooks' text is part of the recipe: an edited hook never reuses an old build.
    files = {name: (GUEST_FILES_DIR / name).read_text() for name in sorted(GUEST_FILES)}
    recipe = [RECIPE_VERSION, suite, arch, GUEST_PACKAGES, DPKG_OPTIONS, _SETUP, _CUSTOMIZE, files]
    h = hashlib.sha256(json.dumps(recipe).encode())
    return h.hexdigest()[:12]


def serial_console(arch: str) -> str:
    """The kernel's name for the first serial port: the 16550 of q35, the PL011 of virt."""
    return "ttyAMA0" if arch == "arm64" else "ttyS0"


def build_debian_image(suite: str, arch: str, mirror: str, cache_dir: Path) -> BaseImage:
    """A Debian `suite` guest built with mmdebstrap, kernel and initrd beside the qcow2."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
        raise UsageError(f"QEMU_VM_IMAGE_URL: debian:{suite}: not a Debian suite name")
    out = _build_dir(suite, arch, cache_dir)
    image = BaseImage(
        out / "disk.qcow2",
        kernel=out / "vmlinuz",
        initrd=out / "initrd.img",
        # panic=1: a guest kernel that panics reboots after a second instead of hanging
        # until the boot timeout. Seen here: multi-threaded TCG races the kernel's
        # live code patching (an int3 oops in sched_clock_cpu, a panic 3.6 s into boot).
        # Not a first boot to systemd: Debian's packages enable their units already,
        # so the preset pass (7 s under TCG) and ssh-keygen -A of key types we replace
        # anyway are wasted. No crypto self-tests, no SSH-over-vsock probing either.
        cmdline=" ".join(
            [
                f"root=/dev/vda rw console={serial_console(arch)} panic=1",
                "systemd.condition_first_boot=false systemd.ssh_auto=no cryptomgr.notests",
                GATE_PARAM,
            ]
        ),
        gated=True,
    )
    if (out / "build.json").exists():
        say(f"using cached debian:{suite} guest image {out}")
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{out.name}.lock")):
        if (out / "build.json").exists():  # built by another process while we waited
            return image
        _build(suite, arch, mirror, out)
    return image


def _build_dir(suite: str, arch: str, cache_dir: Path) -> Path:
    return cache_dir / f"debian-{suite}-{arch}-{build_key(suite, arch)}"


def debian_build_cached(suite: str, arch: str, cache_dir: Path) -> bool:
    return (_build_dir(suite, arch, cache_dir) / "build.json").exists()


def _build(suite: str, arch: str, mirror: str, out: Path) -> None:
    for tool in ("mmdebstrap", "mke2fs", "qemu-img"):
        if not shutil.which(tool):
            raise VmUnavailable(
                f"building debian:{suite} needs {tool}; install it "
                f"(apt-get install mmdebstrap e2fsprogs qemu-utils)"
            )
    if os.geteuid() != 0:
        raise VmUnavailable(
            f"building debian:{suite} with mmdebstrap needs root here; run `vm.up` once as root, "
            f"or set QEMU_VM_IMAGE_URL to a downloaded image"
        )
    # Another arch's tree runs its maintainer scripts under qemu-user-static.
    binfmt.require(arch)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".build-{out.name}-", dir=out.parent))
    try:
        tree = work / "root"
        argv = [
            "mmdebstrap",
            "--variant=apt",
            f"--architectures={arch}",
            "--include=" + ",".join([f"linux-image-{arch}", *GUEST_PACKAGES]),
            "--setup-hook=" + _SETUP,
            # copy-in needs the folders; their names are ours, constant.
            '--customize-hook=mkdir -p "$1"' + ' "$1"'.join(sorted(set(GUEST_FILES.values()))),
            *[
                f"--customize-hook=copy-in {GUEST_FILES_DIR / name} {dest}"
                for name, dest in GUEST_FILES.items()
            ],
            "--customize-hook=" + _CUSTOMIZE,
            *[f"--dpkgopt={opt}" for opt in DPKG_OPTIONS],
            suite,
            str(tree),
            mirror,
        ]
        log = work / "mmdebstrap.log"
        # INITRD=No: the kernel's package makes no initramfs of its own; the trigger
        # at the end of the install makes the one (with every package's hooks in),
        # instead of a second generation (55 s under qemu-user).
        env = os.environ | binfmt.build_env(arch) | {"INITRD": "No"}
        with spinner(f"building the debian:{suite} guest image with mmdebstrap"):
            _run_logged(argv, log, f"mmdebstrap of debian:{suite}", env)
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            initrds = sorted((tree / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise VmUnavailable(f"the debian:{suite} build has no kernel or initrd in /boot")
            shutil.copy2(kernels[-1], work / "vmlinuz")
            shutil.copy2(initrds[-1], work / "initrd.img")
            raw = work / "disk.raw"
            _run_logged(
                ["mke2fs", "-q", "-t", "ext4", "-L", "rootfs", "-d", str(tree), str(raw), "4G"],
                log,
                "mke2fs",
            )
            shutil.rmtree(tree)
            _run_logged(
                ["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "disk.qcow2")],
                log,
                "qemu-img convert",
            )
            raw.unlink()
        seconds = round(time.monotonic() - started, 1)
        record = {"suite": suite, "arch": arch, "mirror": mirror, "packages": GUEST_PACKAGES}
        (work / "build.json").write_text(json.dumps(record | {"seconds": seconds}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
        say(f"built debian:{suite} guest image in {seconds} s: {out}")
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _run_logged(argv: list[str], log: Path, what: str, env: dict | None = None) -> None:
    with open(log, "a") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise VmUnavailable(f"{what} failed (exit {proc.returncode}):\n{tail}")
