#!/usr/bin/env bash
# One entry point that also does all set-up on a fresh Debian machine (as root, or with sudo):
#   ./harness.sh run    the main job: build or reuse the bed, run every scenario, write results/
#   ./harness.sh test   the project's own tests (unit + integration against real beds + the catalog)
#   ./harness.sh ARGS   any other `harness` command, e.g. ./harness.sh bed status
# Set-up is idempotent and quick when already done: host packages (apt), then .venv with the
# pinned Python packages from pyproject.toml.
set -Eeuo pipefail   # -E: the ERR trap (set-up failure report) also fires inside functions
cd "$(dirname "$(readlink -f "$0")")"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

HOST_PACKAGES=(mmdebstrap e2fsprogs cpio qemu-utils openssh-client iproute2 procps
  libvirt-dev pkg-config python3-venv python3-dev gcc chromium
  vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu dnsmasq-base
  libxml2-utils socat iptables nftables grub-pc-bin parted ccache patch xz-utils zstd gpgv debian-archive-keyring git)

log() { printf '[harness.sh] %s\n' "$*" >&2; }

# Set-up runs as named steps; a failure names the step, what apt or pip said and the fix (never a bare exit).
STEP="start"
FIX=""
step() { STEP=$1; FIX=${2:-}; }
on_error() {
  local rc=$?
  log "set-up failed at step '$STEP' (exit $rc)"
  [ -z "$FIX" ] || log "fix: $FIX"
  exit "$rc"
}
trap on_error ERR

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

qemu_has_igb() {
  command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

host_codename() { (. /etc/os-release && echo "${VERSION_CODENAME:-}"); }

# apt's own view of its sources, whatever files they live in (one-line sources.list, deb822 *.sources, both):
# one "SITE RELEASE" line per configured binary index.
apt_sources() {
  apt-get indextargets --no-release-info --format '$(SITE) $(RELEASE) $(TARGET_OF)' 'Identifier: Packages' \
    | awk '$3 == "deb" { print $1, $2 }' | sort -u
}

# The Debian archive the host already uses for its own release (so no address is baked into the project).
apt_debian_site() {
  apt_sources | awk -v rel="$1" '$2 == rel { print $1; exit }'
}

# bookworm only: the emulated igb NIC (SR-IOV) needs QEMU >= 8.0, which bookworm-backports has (10.0).
# Adds one deb822 file, unless apt already knows bookworm-backports (from any file, in either format).
ensure_apt_sources() {
  local codename site
  codename=$(host_codename)
  [ "$codename" = bookworm ] || return 0
  step "read apt sources" "check that 'apt-get indextargets' works (apt >= 1.1) and that /etc/apt parses"
  if apt_sources | awk '$2 == "bookworm-backports" { found = 1 } END { exit !found }'; then
    return 0
  fi
  site=$(apt_debian_site bookworm)
  if [ -z "$site" ]; then
    log "apt has no source for 'bookworm' itself, so there is no mirror to take bookworm-backports from"
    log "fix: add your Debian mirror for bookworm to /etc/apt/sources.list.d/debian.sources, or add bookworm-backports yourself"
    exit 2
  fi
  step "write /etc/apt/sources.list.d/hx-bookworm-backports.sources" "make /etc/apt/sources.list.d writable"
  log "adding bookworm-backports from $site (QEMU >= 8 for the igb SR-IOV NIC)"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$site" | $SUDO tee /etc/apt/sources.list.d/hx-bookworm-backports.sources >/dev/null
  HX_APT_CHANGED=1
}

ensure_host() {
  local codename need
  codename=$(host_codename)
  need=$(missing_packages "${HOST_PACKAGES[@]}" | xargs)
  if [ -n "$need" ] || ! qemu_has_igb; then
    ensure_apt_sources
    log "installing host packages: ${need:-qemu with igb}"
    step "apt-get update" "check the mirror in apt's sources ('apt-get indextargets') and that this machine reaches it"
    $SUDO apt-get update -q --error-on=any >/dev/null
    step "apt-get install host packages" "run: apt-get install --no-install-recommends $need (apt's message is above)"
    # shellcheck disable=SC2086
    [ -z "$need" ] || $SUDO apt-get install -y -q --no-install-recommends $need >/dev/null
    if ! qemu_has_igb; then
      step "install QEMU >= 8 (igb NIC)" "on bookworm: apt-get install -t bookworm-backports qemu-system-x86"
      if [ "$codename" = bookworm ]; then
        $SUDO apt-get install -y -q -t bookworm-backports qemu-system-x86 >/dev/null
      else
        $SUDO apt-get install -y -q qemu-system-x86 >/dev/null
      fi
    fi
    if ! qemu_has_igb; then
      log "QEMU on this host has no igb device (need QEMU >= 8.0; have: $(qemu-system-x86_64 --version 2>/dev/null | head -1))"
      log "fix: install qemu-system-x86 >= 8.0 (bookworm: from bookworm-backports)"
      exit 2
    fi
  fi
}

ensure_venv() {
  local stamp=.venv/.hx-installed
  if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "creating .venv with the pinned Python packages"
    step "python3 -m venv .venv" "apt-get install python3-venv"
    python3 -m venv .venv
    step "pip install -e '.[test]'" "check that this machine reaches PyPI; pip's message is above"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

cmd=${1:-help}
if [ "$cmd" = apt-sources ]; then
  # Only the apt-sources step (tests run it in chroots of each layout): prints what apt then knows.
  HX_APT_CHANGED=0
  ensure_apt_sources
  log "apt sources ok (changed: $HX_APT_CHANGED)"
  apt_sources
  exit 0
fi
ensure_host
ensure_venv
trap - ERR

case "$cmd" in
  run)  shift; exec .venv/bin/harness run "$@" ;;
  # two xdist workers, one per bed group (tests/ci_groups.py); HX_TEST_WORKERS=0: one process
  test) shift; exec .venv/bin/python -m pytest -p no:cacheprovider -rfEs --harness-retries 1 \
          -n "${HX_TEST_WORKERS:-2}" --dist loadgroup "$@" ;;
  help|-h|--help) exec .venv/bin/harness --help ;;
  *)    exec .venv/bin/harness "$@" ;;
esac
