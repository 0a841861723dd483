#!/bin/bash
# Build the dev host's worker image, localhost/flashpods-worker:latest, into the
# flashpods user's Podman store (the caller's own store when not root): a busybox-static
# rootfs with one link per applet, /etc/passwd and /etc/group, /tmp 1777 and the
# /workspace and /artifacts mount points. No registry is needed.
#
# Rebuilt only when its inputs change: the image carries a label with the hash of this
# script and the busybox binary. Usage: images/worker/build.sh [--force]
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"

image=${FLASHPODS_WORKER_IMAGE:-localhost/flashpods-worker:latest}
busybox=${FLASHPODS_BUSYBOX:-/bin/busybox}
[[ -x $busybox ]] || die "$busybox not found: apt-get install busybox-static"

inputs=$(cat "${BASH_SOURCE[0]}" "$busybox" | sha256sum | cut -c1-32)
current=$(as_podman_user podman image inspect --format '{{index .Config.Labels "flashpods.inputs"}}' \
	"$image" 2>/dev/null || true)
if [[ ${1:-} != --force && $current == "$inputs" ]]; then
	exit 0
fi

rootfs=$(mktemp -d /var/tmp/flashpods-worker-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,workspace,artifacts,root}
install -m 0755 "$busybox" "$rootfs/bin/busybox"
# One link per applet; not one for "busybox" itself (that is the binary).
"$busybox" --list | while read -r applet; do
	[[ $applet == busybox || -e $rootfs/bin/$applet ]] && continue
	ln -s busybox "$rootfs/bin/$applet"
done
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
chmod 1777 "$rootfs/tmp"
chmod 0755 "$rootfs" "$rootfs/workspace" "$rootfs/artifacts"

log "importing $image"
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf - . |
	as_podman_user podman import --quiet \
		--change 'ENV PATH=/bin' \
		--change 'CMD ["/bin/sh"]' \
		--change "LABEL flashpods.inputs=$inputs" \
		- "$image" >/dev/null
