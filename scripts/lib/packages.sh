#!/bin/bash
# Install the Debian packages Flashpods needs (only what is missing; apt-get update once).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

packages=(podman uidmap runc crun slirp4netns fuse-overlayfs rsync nftables iproute2
	busybox-static debootstrap curl jq gcc libc6-dev python3-venv nix-bin shellcheck
	util-linux procps)
# Test tools (scripts/test sets FLASHPODS_SETUP_TEST_TOOLS=1): nginx is the fast stand-in
# origin of benchmark P7 (bench/credential_proxy.py); a dev host does not need it.
if [[ ${FLASHPODS_SETUP_TEST_TOOLS:-0} == 1 ]]; then
	packages+=(nginx)
fi
# wireguard-tools recommends a kernel image: never pull one in.
no_recommends=(wireguard-go wireguard-tools)

missing() {
	local pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
			printf '%s\n' "$pkg"
	done
}

mapfile -t want < <(missing "${packages[@]}")
mapfile -t want_nr < <(missing "${no_recommends[@]}")
# npm may come with a nodejs from another repository (NodeSource bundles it): only ask
# Debian for it when there is no npm command at all.
command -v npm >/dev/null || want+=(npm)
if ((${#want[@]} + ${#want_nr[@]} == 0)); then
	exit 0
fi
is_root || die "missing packages: ${want[*]} ${want_nr[*]}; run as root (sudo) to install them"
export DEBIAN_FRONTEND=noninteractive
log "installing: ${want[*]} ${want_nr[*]}"
apt-get update -qq
if ((${#want[@]})); then
	apt-get install -y -qq "${want[@]}" >/dev/null
fi
if ((${#want_nr[@]})); then
	apt-get install -y -qq --no-install-recommends "${want_nr[@]}" >/dev/null
fi
