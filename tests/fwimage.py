"""A firmware-shaped test image, built here (issue 11): one GPT disk holding an EFI
system partition (systemd-boot as the removable-media loader, the kernel and initrd
beside it) and an ext4 root, so that the firmware boots it with no kernel from the
host, as it boots Debian's cloud images. Like a fresh cloud image, it has cloud-init,
sshd and common tools but not iperf3, jq or the guest agent: the VM's provisioning
installs them from the mirror.

Built without loop devices or root mounts: mmdebstrap makes the tree, mkfs.vfat and
mtools the ESP, mke2fs -d the root, sfdisk the partition table, and the two
filesystems are copied into place.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from patchbay_vm_tasks import images

MIRROR = "http://deb.debian.org/debian"
ESP_MB = 96
ROOT_MB = 3072
SECTOR = 512
FIRST_MB = 1  # where the first partition starts; the GPT fits before it
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TOOLS = ("mmdebstrap", "mke2fs", "mkfs.vfat", "mcopy", "sfdisk", "qemu-img")

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
            "--include=" + ",".join([f"linux-image-{arch}", *PACKAGES]),
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


def assemble(esp: Path, rootfs: Path, out: Path) -> Path:
    """The qcow2 disk at `out`: GPT, the ESP as partition 1, the root filesystem as 2."""
    mib = 1 << 20
    root_mb = -(-rootfs.stat().st_size // mib)
    raw = out.with_name(out.name + ".raw")
    with raw.open("wb") as f:
        f.truncate((FIRST_MB + ESP_MB + root_mb + 1) * mib)  # + room for the backup GPT
    per_mb = mib // SECTOR
    layout = (
        "label: gpt\n"
        f"start={FIRST_MB * per_mb}, size={ESP_MB * per_mb}, type={ESP_TYPE}, name=esp\n"
        f"start={(FIRST_MB + ESP_MB) * per_mb}, size={root_mb * per_mb}, "
        f"type={LINUX_TYPE}, name=root\n"
    )
    subprocess.run(
        ["sfdisk", "-q", str(raw)], input=layout, text=True, check=True, capture_output=True
    )
    with raw.open("r+b") as f:
        _copy_into(esp, f, FIRST_MB * mib)
        _copy_into(rootfs, f, (FIRST_MB + ESP_MB) * mib)
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
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(tree), str(rootfs), f"{ROOT_MB}M"])
    assemble(esp, rootfs, out)
    shutil.rmtree(work)
    return out


def write_sha512sums(image: Path) -> None:
    """SHA512SUMS beside the image, as the cloud image's directory has it."""
    digest = hashlib.sha512(image.read_bytes()).hexdigest()
    (image.parent / "SHA512SUMS").write_text(f"{digest}  {image.name}\n")
