"""Guest provisioning (SPEC 4.8), as one idempotent root script.

The guest image we build already carries all of it, so on that image the script
only checks; on the official cloud image the first run installs the packages.
"""

from __future__ import annotations

# python3 (3.11+) runs the builtin runner; openssl makes its gen-certs step's certificates;
# rsync, so that `rsync -e "ssh -F <vm.ssh-config>"` works.
PACKAGES = (
    "iproute2 nftables iptables iperf3 iputils-ping bridge-utils jq curl python3 openssl rsync"
)
COMMANDS = "ip nft iptables iperf3 ping brctl jq curl python3 openssl rsync"

SCRIPT = f"""\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
missing=
for cmd in {COMMANDS}; do command -v "$cmd" >/dev/null || missing="$missing $cmd"; done
if [ -n "$missing" ]; then
  echo "installing packages for:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends {PACKAGES} >&2
fi
modprobe sch_netem
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
grep -qx sch_netem /etc/modules-load.d/patchbay.conf 2>/dev/null \\
  || echo sch_netem >> /etc/modules-load.d/patchbay.conf
# cloud-init has just replaced the host keys; a VM killed before the guest's
# page cache reached the disk would boot without any (sshd: no hostkeys).
sync
"""
