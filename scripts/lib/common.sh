#!/bin/bash
# Shared helpers for the install/setup steps in scripts/lib (sourced, not run).
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

FLASHPODS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FLASHPODS_VENV=${FLASHPODS_VENV:-/opt/flashpods/venv}
FLASHPODS_USER=${FLASHPODS_PODMAN_USER:-flashpods}
FLASHPODS_API_USER=flashpods-api
FLASHPODS_TOKEN_USER=flashpods-token
FLASHPODS_GROUP=flashpods

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
is_root() { [[ $(id -u) -eq 0 ]]; }

# Run a command as the rootless Podman user with a clean environment (no logind here,
# so XDG_RUNTIME_DIR is set by hand). Without root: the caller's own store.
as_podman_user() {
	if is_root; then
		local uid home
		uid=$(id -u "$FLASHPODS_USER")
		home=$(getent passwd "$FLASHPODS_USER" | cut -d: -f6)
		runuser -u "$FLASHPODS_USER" -- env -i HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
			PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"
	else
		"$@"
	fi
}
