#!/usr/bin/env bash
# A user's set-up on Debian or Ubuntu: what the main job needs and nothing more.
# QEMU for the host's arch, mmdebstrap (builds the guest image from the Debian mirror
# when the cloud image cannot be downloaded), the OpenSSH client, and this package with
# its dependencies in ./.venv. Safe to run again: on a set-up machine it only checks.
#
#   bash recipes/setup-debian.sh [PACKAGE]
#
# PACKAGE is what pip installs: this checkout when run from it (the default), or e.g.
# `patchbay-vm-tasks` or a git URL when run from your own project.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
package="${1:-$here}"
case "$(uname -m)" in
  x86_64) qemu=qemu-system-x86 ;;
  aarch64|arm64) qemu="qemu-system-arm qemu-efi-aarch64" ;;
  *) echo "error: no QEMU package known for $(uname -m)" >&2; exit 2 ;;
esac
# shellcheck disable=SC2206
packages=($qemu qemu-utils mmdebstrap openssh-client ca-certificates)
# Debian's python3 makes virtualenvs only with python3-venv; another python3 may not need it.
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ -e /dev/kvm ] && [ ! -w /dev/kvm ]; then
  echo "note: /dev/kvm is not writable for you: join the kvm group for hardware acceleration" \
       "(sudo adduser $USER kvm, then log in again); until then guests run emulated"
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "$package"
echo "ready: .venv/bin/invoke --list (or .venv/bin/patchbay-vm --help)"
