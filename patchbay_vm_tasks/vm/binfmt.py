"""binfmt_misc: can this host run the other arch's binaries (for mmdebstrap)?

Building a `debian:<suite>` arm64 guest on an x86_64 host runs the guest's
maintainer scripts under qemu-user-static, which the kernel starts through a
binfmt_misc entry. Registering one is a privileged, machine-wide step (`.ci/setup`
does it): the tool only detects what is missing and prints the commands.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import VmUnavailable

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF_DIR = Path("/usr/lib/binfmt.d")  # where qemu-user-static puts its entries
# Debian arch -> QEMU's name for it (the binfmt entry is qemu-<name>).
QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Binfmt:
    """Whether the kernel runs `arch` binaries, and if not, why and how to fix it."""

    arch: str
    ready: bool
    problem: str = ""
    commands: tuple[str, ...] = ()


def host_debian_arch(machine: str | None = None) -> str:
    m = (machine or platform.machine()).lower()
    return "arm64" if m in ("arm64", "aarch64") else "amd64"


def check(
    arch: str,
    host_machine: str | None = None,
    binfmt_dir: Path = BINFMT_DIR,
    conf_dir: Path = BINFMT_CONF_DIR,
) -> Binfmt:
    """Whether binaries of guest `arch` run here; the commands that would make them."""
    if arch == host_debian_arch(host_machine):
        return Binfmt(arch, ready=True)
    name = f"qemu-{QEMU_ARCH[arch]}"
    entry = binfmt_dir / name
    conf = conf_dir / f"{name}.conf"
    install = "sudo apt-get install qemu-user-static"
    register = f"sudo sh -c 'cat {conf} > {binfmt_dir}/register'"
    commands: list[str] = []
    if not (binfmt_dir / "register").exists():
        problem = f"binfmt_misc is not mounted on {binfmt_dir}"
        commands.append(f"sudo mount -t binfmt_misc binfmt_misc {binfmt_dir}")
    elif not entry.exists():
        problem = f"no {name} entry in {binfmt_dir}"
    else:
        lines = _read_lines(entry)
        flags = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("flags:")), "")
        status = _read_lines(binfmt_dir / "status")
        if status[:1] == ["disabled"]:
            return Binfmt(arch, False, "binfmt_misc is disabled",
                          (f"sudo sh -c 'echo 1 > {binfmt_dir}/status'",))  # fmt: skip
        if lines[:1] != ["enabled"]:
            return Binfmt(arch, False, f"the {name} entry is disabled",
                          (f"sudo sh -c 'echo 1 > {entry}'",))  # fmt: skip
        if "F" in flags:
            return Binfmt(arch, ready=True)
        # Without F (fix binary) the kernel looks for the interpreter inside the
        # chroot mmdebstrap builds, where it is not.
        problem = f"the {name} entry lacks the F flag (flags: {flags or 'none'})"
        commands.append(f"sudo sh -c 'echo -1 > {entry}'")
    if not conf.exists():
        commands.append(install)
    commands.append(register)
    return Binfmt(arch, False, problem, tuple(commands))


# The CPU qemu-user emulates for a foreign build. Its default, `max`, has pointer
# authentication with the architected QARMA5 algorithm, which TCG computes slowly, and
# Debian's arm64 programs sign every return address: a shell loop ran 84 s under `max`
# and 6.9 s under a Cortex-A72 (no PAuth: the signing instructions are NOPs there).
# Any model runs the same binaries: the tree built is the same.
EMULATED_CPU = {"arm64": "cortex-a72"}


def build_env(arch: str, host_machine: str | None = None) -> dict[str, str]:
    """Environment for a build whose `arch` programs run under qemu-user here."""
    if arch == host_debian_arch(host_machine) or arch not in EMULATED_CPU:
        return {}
    return {"QEMU_CPU": EMULATED_CPU[arch]}


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        return []


def require(arch: str, which=shutil.which, **env) -> None:
    """VmUnavailable with the commands to run when `arch` binaries cannot run here."""
    state = check(arch, **env)
    if state.ready:
        if arch != host_debian_arch(env.get("host_machine")) and which("arch-test") is None:
            # mmdebstrap checks a foreign arch with it before building ("install arch-test").
            raise VmUnavailable(
                f"building an {arch} guest needs arch-test, which mmdebstrap uses to check "
                f"that {arch} programs run here:\n  sudo apt-get install arch-test"
            )
        return
    steps = "\n".join(f"  {cmd}" for cmd in state.commands)
    raise VmUnavailable(
        f"building an {arch} guest on this {host_debian_arch(env.get('host_machine'))} host "
        f"runs its programs under qemu-user-static, but {state.problem}. "
        f"Run as root (the tool does not; the mount and the registration last until "
        f"the host reboots):\n{steps}"
    )
