#!/usr/bin/env bash
# One entry point that also does all set-up on a fresh Debian machine (as root, or with sudo):
#   ./harness.sh run    the main job: build or reuse the bed, run every scenario, write results/
#   ./harness.sh test   the project's own tests (unit + integration against real beds + the catalog)
#   ./harness.sh ARGS   any other `harness` command, e.g. ./harness.sh bed status
# Set-up is idempotent and quick when already done: host packages (apt), then .venv with the
# pinned Python packages from pyproject.toml.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

HOST_PACKAGES=(mmdebstrap e2fsprogs cpio qemu-utils openssh-client iproute2 procps
  libvirt-dev pkg-config python3-venv python3-dev gcc chromium
  vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu dnsmasq-base
  libxml2-utils socat iptables nftables grub-pc-bin parted ccache patch xz-utils zstd gpgv debian-archive-keyring git)

log() { printf '[harness.sh] %s\n' "$*" >&2; }

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

qemu_has_igb() {
  command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

ensure_host() {
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  local need
  need=$(missing_packages "${HOST_PACKAGES[@]}")
  if [ -n "$need" ] || ! qemu_has_igb; then
    if [ "$codename" = bookworm ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      # The emulated igb NIC (SR-IOV) needs QEMU >= 8.0: bookworm-backports has 10.0.
      log "adding bookworm-backports (QEMU >= 8 for the igb SR-IOV NIC)"
      local uri
      uri=$(grep -rhoE '^(URIs:\s*|deb\s+)\S+/debian/?(\s|$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | head -1 | sed -E 's/^(URIs:\s*|deb\s+)//; s/\s+$//')
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" | $SUDO tee /etc/apt/sources.list.d/hx-bookworm-backports.sources >/dev/null
    fi
    log "installing host packages: ${need:-qemu with igb}"
    $SUDO apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    [ -z "$need" ] || $SUDO apt-get install -y -q --no-install-recommends $need >/dev/null
    if ! qemu_has_igb; then
      if [ "$codename" = bookworm ]; then
        $SUDO apt-get install -y -q -t bookworm-backports qemu-system-x86 >/dev/null
      else
        $SUDO apt-get install -y -q qemu-system-x86 >/dev/null
      fi
    fi
    qemu_has_igb || { log "QEMU on this host has no igb device (need QEMU >= 8.0)"; exit 2; }
  fi
}

ensure_venv() {
  local stamp=.venv/.hx-installed
  if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "creating .venv with the pinned Python packages"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

ensure_host
ensure_venv

cmd=${1:-help}
case "$cmd" in
  run)  shift; exec .venv/bin/harness run "$@" ;;
  test) shift; exec .venv/bin/python -m pytest -p no:cacheprovider -rfEs --harness-retries 1 "$@" ;;
  help|-h|--help) exec .venv/bin/harness --help ;;
  *)    exec .venv/bin/harness "$@" ;;
esac
