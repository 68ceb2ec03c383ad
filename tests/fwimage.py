"""A firmware-shaped test image, built here (issue 11): one GPT disk holding an EFI
system partition (systemd-boot as the removable-media loader, the kernel and initrd
beside it) and an ext4 root, so that the firmware boots it with no kernel from the
host, as it boots Debian's cloud images; on x86_64 also GRUB for BIOS (its boot sector
in the MBR, its core in a BIOS boot partition), so that SeaBIOS boots the same disk.
Like a fresh cloud image, it has cloud-init, sshd and common tools but not iperf3, jq
or the guest agent: the VM's provisioning installs them from the mirror.

Built without loop devices or root mounts: mmdebstrap makes the tree, mkfs.vfat and
mtools the ESP, mke2fs -d the root, sfdisk the partition table, the two filesystems
are copied into place and GRUB's images written where grub-bios-setup would put them.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import struct
import subprocess
import urllib.request
from pathlib import Path

from patchbay_vm_tasks.vm import images

MIRROR = "http://deb.debian.org/debian"
ESP_MB = 96
ROOT_MB = 3072
SECTOR = 512
FIRST_MB = 1  # where the first partition starts; the GPT fits before it
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TOOLS = ("mmdebstrap", "mke2fs", "mkfs.vfat", "mcopy", "sfdisk", "qemu-img", "debugfs")

# systemd-boot's file name per arch, and where the firmware looks for a removable loader.
LOADER = {
    "amd64": ("systemd-bootx64.efi", "BOOTX64.EFI"),
    "arm64": ("systemd-bootaa64.efi", "BOOTAA64.EFI"),
}
# What a Debian cloud image has: iproute2 (cloud-init's networkd renderer needs `ip`),
# growpart and resize2fs (the root partition fills the VM's disk), and the common tools,
# so that provisioning installs only what a cloud image lacks (MISSING): each package
# costs seconds to unpack under TCG, and CI's time is counted.
PACKAGES = [
    "systemd-sysv", "udev", "kmod", "systemd-resolved", "openssh-server", "cloud-init",
    "sudo", "ca-certificates", "initramfs-tools", "systemd-boot-efi", "iproute2",
    "e2fsprogs", "cloud-guest-utils", "nftables", "iptables", "iputils-ping",
    "bridge-utils", "curl", "python3", "openssl", "rsync",
]  # fmt: skip
MISSING = ["iperf3", "jq", "qemu-guest-agent"]
# GRUB for BIOS (x86_64): as Debian's cloud images, the test image boots through SeaBIOS
# too, with GRUB's boot sector in the MBR and its core in a BIOS boot partition.
BIOS_PACKAGES = {"amd64": ["grub-pc-bin"], "arm64": []}
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
BIOS_MB = 1  # the BIOS boot partition: GRUB's core, ~100 KB

# What the cloud image's own build sets up: root by partition, networkd for cloud-init's
# network config, the NoCloud seed (no other datasource to probe), host keys from the seed.
CUSTOMIZE = r"""set -e
root="${1:?}"; [ "$root" != / ]
echo '/dev/vda2 / ext4 defaults 0 1' > "$root/etc/fstab"
printf '%s\n' 'datasource_list: [NoCloud, None]' 'system_info:' '  network:' \
  '    renderers: [networkd]' '    activators: [networkd]' \
  > "$root/etc/cloud/cloud.cfg.d/90-fwimage.cfg"
chroot "$root" systemctl enable --quiet systemd-networkd.service
rm -f "$root"/etc/ssh/ssh_host_* "$root/etc/hostname"
"""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t)]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def build_tree(arch: str, suite: str, tree: Path) -> None:
    _run(
        [
            "mmdebstrap", "--variant=apt", f"--architectures={arch}",
            "--include=" + ",".join([f"linux-image-{arch}", *PACKAGES, *BIOS_PACKAGES[arch]]),
            # The small initramfs of our own images: virtio disk and ext4 only.
            "--setup-hook=" + images._SETUP,
            "--customize-hook=" + CUSTOMIZE,
            suite, str(tree), MIRROR,
        ]
    )  # fmt: skip
    # DNS through systemd-resolved, as the cloud image has it (mmdebstrap leaves the
    # file as it found it), so that apt in the guest finds the mirror.
    resolv = tree / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def esp_image(kernel: Path, initrd: Path, loader: Path, arch: str, path: Path) -> None:
    """The EFI system partition's filesystem at `path`: systemd-boot where the firmware
    looks for a removable disk's loader, its one entry, the kernel and initrd."""
    staging = path.parent / "esp"
    (staging / "EFI" / "BOOT").mkdir(parents=True)
    (staging / "loader" / "entries").mkdir(parents=True)
    shutil.copy(loader, staging / "EFI" / "BOOT" / LOADER[arch][1])
    shutil.copy(kernel, staging / "vmlinuz")
    shutil.copy(initrd, staging / "initrd.img")
    (staging / "loader" / "loader.conf").write_text("default debian.conf\ntimeout 0\n")
    console = images.serial_console(arch)
    (staging / "loader" / "entries" / "debian.conf").write_text(
        "title Debian\nlinux /vmlinuz\ninitrd /initrd.img\n"
        f"options root=/dev/vda2 rw console=tty0 console={console} panic=1\n"
    )
    _run(["mkfs.vfat", "-C", "-F", "32", "-n", "ESP", str(path), str(ESP_MB * 1024)])
    _run(["mcopy", "-s", "-i", str(path), *map(str, staging.iterdir()), "::/"])
    shutil.rmtree(staging)


def grub_bios_images(tree: Path) -> tuple[bytes, bytes]:
    """GRUB's boot sector and its core image for a BIOS boot from partition 2 of the
    first disk: the core carries its whole configuration (root, kernel, initrd, boot),
    so nothing of GRUB's is needed in the root filesystem."""
    kernel = sorted((tree / "boot").glob("vmlinuz-*"))[-1].name
    initrd = sorted((tree / "boot").glob("initrd.img-*"))[-1].name
    (tree / "tmp" / "grub-early.cfg").write_text(
        "set root=(hd0,gpt2)\n"
        f"linux /boot/{kernel} root=/dev/vda2 rw console=tty0 console=ttyS0 panic=1\n"
        f"initrd /boot/{initrd}\n"
        "boot\n"
    )
    _run(
        [
            "chroot", str(tree), "grub-mkimage", "-O", "i386-pc", "-o", "/tmp/core.img",
            "-c", "/tmp/grub-early.cfg", "-p", "/boot/grub",
            "biosdisk", "part_gpt", "ext2", "linux", "boot",
        ]
    )  # fmt: skip
    boot = (tree / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    core = (tree / "tmp" / "core.img").read_bytes()
    for name in ("grub-early.cfg", "core.img"):
        (tree / "tmp" / name).unlink()
    return boot, core


# Where grub-bios-setup patches GRUB's images (GRUB's include/grub/i386/pc/boot.h):
# the boot sector's first sector of the core and its drive fields, and the blocklist
# at the end of the core's first sector (the rest of the core, right after it).
KERNEL_SECTOR, BOOT_DRIVE, DRIVE_CHECK, BOOT_CODE_END = 0x5C, 0x64, 0x66, 0x1B8
BLOCKLIST = 0x200 - 12


def install_grub_bios(disk, boot: bytes, core: bytes, core_lba: int) -> None:
    """Write GRUB's boot sector into the MBR of the open, partitioned `disk` (keeping
    its protective partition table) and its core at sector `core_lba`, as
    grub-bios-setup does on a device, here without one."""
    mbr = bytearray(boot[:BOOT_CODE_END])
    mbr[KERNEL_SECTOR : KERNEL_SECTOR + 8] = struct.pack("<Q", core_lba)
    mbr[BOOT_DRIVE] = 0xFF  # the drive the BIOS booted from
    mbr[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"  # a hard disk: skip the floppy check
    image = bytearray(core)
    image[BLOCKLIST : BLOCKLIST + 8] = struct.pack("<Q", core_lba + 1)
    disk.seek(0)
    disk.write(mbr)
    disk.seek(core_lba * SECTOR)
    disk.write(image)


def _copy_into(src: Path, dest, offset: int) -> None:
    """Copy src into the open file dest at offset, leaving its zero blocks as holes."""
    block = 1 << 20
    with src.open("rb") as f:
        pos = offset
        while chunk := f.read(block):
            if chunk.count(0) != len(chunk):
                dest.seek(pos)
                dest.write(chunk)
            pos += len(chunk)


def assemble(
    esp: Path, rootfs: Path, out: Path, grub_bios: tuple[bytes, bytes] | None = None
) -> Path:
    """The qcow2 disk at `out`: GPT, the ESP as partition 1, the root filesystem as 2;
    with `grub_bios` (boot sector, core) also GRUB for BIOS, its core in partition 3,
    a BIOS boot partition before the others (the root stays last, free to grow)."""
    mib = 1 << 20
    bios_mb = BIOS_MB if grub_bios else 0
    esp_at, root_at = FIRST_MB + bios_mb, FIRST_MB + bios_mb + ESP_MB
    root_mb = -(-rootfs.stat().st_size // mib)
    raw = out.with_name(out.name + ".raw")
    with raw.open("wb") as f:
        f.truncate((root_at + root_mb + 1) * mib)  # + room for the backup GPT
    per_mb = mib // SECTOR
    name = raw.name
    layout = (
        "label: gpt\n"
        f"{name}1 : start={esp_at * per_mb}, size={ESP_MB * per_mb}, type={ESP_TYPE}, name=esp\n"
        f"{name}2 : start={root_at * per_mb}, size={root_mb * per_mb}, "
        f"type={LINUX_TYPE}, name=root\n"
    )
    if grub_bios:
        layout += (
            f"{name}3 : start={FIRST_MB * per_mb}, size={bios_mb * per_mb}, "
            f"type={BIOS_BOOT_TYPE}, name=bios\n"
        )
    subprocess.run(
        ["sfdisk", "-q", str(raw)], input=layout, text=True, check=True, capture_output=True
    )
    with raw.open("r+b") as f:
        _copy_into(esp, f, esp_at * mib)
        _copy_into(rootfs, f, root_at * mib)
        if grub_bios:
            install_grub_bios(f, *grub_bios, core_lba=FIRST_MB * per_mb)
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)])
    raw.unlink()
    return out


def make_disk(tree: Path, arch: str, out: Path) -> Path:
    """The firmware-shaped qcow2 disk at `out` from an mmdebstrap tree."""
    work = out.parent / (out.name + ".parts")
    work.mkdir(parents=True)
    esp, rootfs = work / "esp.img", work / "root.img"
    esp_image(
        sorted((tree / "boot").glob("vmlinuz-*"))[-1],
        sorted((tree / "boot").glob("initrd.img-*"))[-1],
        tree / "usr/lib/systemd/boot/efi" / LOADER[arch][0],
        arch,
        esp,
    )
    grub_bios = grub_bios_images(tree) if BIOS_PACKAGES[arch] else None
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(tree), str(rootfs), f"{ROOT_MB}M"])
    assemble(esp, rootfs, out, grub_bios)
    shutil.rmtree(work)
    return out


def efi_loader_from_mirror(arch: str, suite: str, mirror: str, work: Path) -> Path:
    """systemd-boot's EFI binary for `arch`, from the mirror's systemd-boot-efi package
    (an arm64 tree built for `-kernel` boots does not carry it; the file is the same)."""
    index = f"{mirror}/dists/{suite}/main/binary-{arch}/Packages.xz"
    with urllib.request.urlopen(index, timeout=120) as r:
        text = lzma.decompress(r.read()).decode()
    stanza = next(s for s in text.split("\n\n") if s.startswith("Package: systemd-boot-efi\n"))
    filename = next(
        ln.split(": ", 1)[1] for ln in stanza.splitlines() if ln.startswith("Filename:")
    )
    deb = work / "systemd-boot-efi.deb"
    urllib.request.urlretrieve(f"{mirror}/{filename}", deb)
    _run(["dpkg-deb", "-x", str(deb), str(work / "sbe")])
    return work / "sbe" / "usr/lib/systemd/boot/efi" / LOADER[arch][0]


def disk_from_build(build: Path, arch: str, suite: str, out: Path) -> Path:
    """The firmware-shaped qcow2 disk at `out` from a `debian:<suite>` build's folder
    (its ext4 root, kernel and initrd): one tree, both boots (issue 11)."""
    work = out.parent / (out.name + ".parts")
    work.mkdir(parents=True)
    rootfs = work / "root.img"
    _run(["qemu-img", "convert", "-O", "raw", str(build / "disk.qcow2"), str(rootfs)])
    # The build mounts the whole disk as root; here the root is partition 2.
    fstab = work / "fstab"
    fstab.write_text("/dev/vda2 / ext4 defaults,errors=remount-ro 0 1\n")
    _run(["debugfs", "-w", "-R", "rm /etc/fstab", str(rootfs)])
    _run(["debugfs", "-w", "-R", f"write {fstab} /etc/fstab", str(rootfs)])
    loader = efi_loader_from_mirror(arch, suite, MIRROR, work)
    esp_image(build / "vmlinuz", build / "initrd.img", loader, arch, work / "esp.img")
    assemble(work / "esp.img", rootfs, out)
    shutil.rmtree(work)
    return out


def write_sha512sums(image: Path) -> None:
    """SHA512SUMS beside the image, as the cloud image's directory has it."""
    digest = hashlib.sha512(image.read_bytes()).hexdigest()
    (image.parent / "SHA512SUMS").write_text(f"{digest}  {image.name}\n")
