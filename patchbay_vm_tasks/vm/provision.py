"""Guest provisioning (SPEC 4.8), as one idempotent root script.

The guest image we build already carries all of it, so on that image the script
only checks; on the official cloud image the first run installs the packages.
"""

from __future__ import annotations

import shlex

# python3 (3.11+) runs the builtin runner; openssl makes its gen-certs step's certificates;
# rsync, so that `rsync -e "ssh -F <vm.ssh-config>"` works; the QEMU guest agent, so that
# `vm.down` can save the guest and a warm `vm.up` needs no SSH session.
PACKAGES = (
    "iproute2 nftables iptables iperf3 iputils-ping bridge-utils jq curl python3 openssl rsync "
    "qemu-guest-agent"
)
COMMANDS = "ip nft iptables iperf3 ping brctl jq curl python3 openssl rsync qemu-ga"


def ensure_line_script(path: str, line: str) -> str:
    """Shell lines that append `line` to the file at `path` unless it holds that line
    already. Looked for with builtins: each process costs 0.1-0.5 s under TCG, and a
    new VM provisions while it boots."""
    p, want = shlex.quote(path), shlex.quote(line)
    return f"""listed=
if [ -e {p} ]; then
  while IFS= read -r line || [ -n "$line" ]; do [ "$line" != {want} ] || listed=1; done < {p}
fi
[ -n "$listed" ] || echo {want} >> {p}"""


SCRIPT = f"""\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
missing=
for cmd in {COMMANDS}; do command -v "$cmd" >/dev/null || missing="$missing $cmd"; done
if [ -n "$missing" ]; then
  echo "installing packages for:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends {PACKAGES} >&2
  # udev starts the agent when its port appears, which was before it was installed.
  systemctl start qemu-guest-agent >&2 || true
fi
[ -d /sys/module/sch_netem ] || modprobe sch_netem
echo 1 > /proc/sys/net/ipv4/ip_forward
if [ -e /proc/sys/kernel/unprivileged_userns_clone ]; then
  echo 1 > /proc/sys/kernel/unprivileged_userns_clone
fi
if [ -e /proc/sys/kernel/apparmor_restrict_unprivileged_userns ]; then
  echo 0 > /proc/sys/kernel/apparmor_restrict_unprivileged_userns
fi
# Keep it across guest reboots.
if [ ! -e /etc/sysctl.d/90-patchbay.conf ]; then
  printf '%s\\n' net.ipv4.ip_forward=1 kernel.unprivileged_userns_clone=1 \\
    > /etc/sysctl.d/90-patchbay.conf
fi
{ensure_line_script("/etc/modules-load.d/patchbay.conf", "sch_netem")}
# cloud-init has just replaced the host keys; a VM killed before the guest's
# page cache reached the disk would boot without any (sshd: no hostkeys).
sync
"""
