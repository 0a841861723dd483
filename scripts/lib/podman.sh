#!/bin/bash
# Prepare rootless Podman for the flashpods user: /dev/net/tun usable by slirp4netns,
# overlay storage, and an OCI runtime that works on this kernel (crun fails on a cgroup
# v1/v2 hybrid, runc works; measured). Idempotent.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if is_root; then
	# slirp4netns opens /dev/net/tun as the rootless user; some images ship it 0600.
	if [[ -c /dev/net/tun && $(stat -c %a /dev/net/tun) != 666 ]]; then
		log "making /dev/net/tun usable by rootless containers (0666)"
		chmod 0666 /dev/net/tun
	fi
	# Every container's runtime makes a session keyring owned by the job's mapped uid,
	# and the kernel's default quota (200 keys / 20000 bytes per user) stops the 200th
	# concurrent job ("unable to create session key: disk quota exceeded", benchmark P4a).
	# Raised, never lowered; the NixOS module sets the same (modules/flashpods/podman.nix).
	raise_sysctl() { # raise_sysctl KEY MINIMUM
		local now
		now=$(sysctl -n "$1")
		if ((now < $2)); then
			log "raising $1 from $now to $2"
			sysctl -q -w "$1=$2"
		fi
	}
	raise_sysctl kernel.keys.maxkeys 2000
	raise_sysctl kernel.keys.maxbytes 2000000
	home=$(getent passwd "$FLASHPODS_USER" | cut -d: -f6)
	owner=$FLASHPODS_USER
else
	home=$HOME
	owner=$(id -un)
fi
conf_dir=$home/.config/containers
install_owned() { # install_owned DIR
	if is_root; then
		install -d -m 0755 -o "$owner" -g "$owner" "$1"
	else
		mkdir -p "$1"
	fi
}
install_owned "$home/.config"
install_owned "$conf_dir"

# Overlay storage: only set on a store that has none yet (switching the driver of an
# existing store would hide its images).
if [[ ! -e $conf_dir/storage.conf ]]; then
	printf '[storage]\ndriver = "overlay"\n' >"$conf_dir/storage.conf"
	is_root && chown "$owner:$owner" "$conf_dir/storage.conf"
fi

# Try a runtime for real: a throwaway rootfs with busybox, `podman run --rootfs`.
runtime_works() {
	local runtime=$1 dir rc=0
	dir=$(mktemp -d /var/tmp/flashpods-runtime-probe.XXXXXX)
	mkdir -p "$dir/bin"
	cp /bin/busybox "$dir/bin/busybox"
	# Podman writes /etc/hosts and friends into the rootfs: the store owner must own it.
	is_root && chown -R "$owner:$owner" "$dir"
	as_podman_user podman --runtime "$runtime" --cgroup-manager cgroupfs run --rm \
		--rootfs "$dir" /bin/busybox true >/dev/null 2>&1 || rc=$?
	rm -rf "$dir"
	return "$rc"
}

wanted_runtime=
for candidate in crun runc; do
	if command -v "$candidate" >/dev/null && runtime_works "$candidate"; then
		wanted_runtime=$candidate
		break
	fi
done
[[ -n $wanted_runtime ]] || die "neither crun nor runc can start a rootless container; check 'podman info' as $owner"

# No systemd user session here: cgroupfs, and events to a file instead of journald.
conf=$(printf '[engine]\nruntime = "%s"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' \
	"$wanted_runtime")
if [[ ! -e $conf_dir/containers.conf || $(cat "$conf_dir/containers.conf") != "$conf" ]]; then
	log "rootless Podman runtime: $wanted_runtime"
	printf '%s\n' "$conf" >"$conf_dir/containers.conf"
	is_root && chown "$owner:$owner" "$conf_dir/containers.conf"
fi
exit 0
