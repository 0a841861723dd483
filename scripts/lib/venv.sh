#!/bin/bash
# The Python venv every service runs from (/opt/flashpods/venv): Debian's python3, the
# pinned dependencies of requirements.lock (reinstalled only when the lock changes) and
# our four packages, installed non-editable on every run so code changes take effect
# (a checkout under /root is unreadable for the service users, so no editable links).
# FLASHPODS_EDITABLE=1 installs them editable instead (developing on a shared machine).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Service users must read the venv: world-readable, whoever's umask runs this.
umask 022
python=/usr/bin/python3
lock=$FLASHPODS_REPO/requirements.lock
stamp=$FLASHPODS_VENV/.flashpods-lock.sha256

if [[ ! -x $FLASHPODS_VENV/bin/python ]]; then
	parent=$(dirname "$FLASHPODS_VENV")
	[[ -w $parent || ! -e $parent ]] || is_root ||
		die "cannot create $FLASHPODS_VENV: run as root or set FLASHPODS_VENV to a writable path"
	log "creating $FLASHPODS_VENV"
	mkdir -p "$parent"
	"$python" -m venv "$FLASHPODS_VENV"
fi
pip=("$FLASHPODS_VENV/bin/python" -m pip --disable-pip-version-check -q)

want=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
	log "installing pinned dependencies from requirements.lock"
	"${pip[@]}" install -r "$lock"
	printf '%s\n' "$want" >"$stamp"
fi

packages=()
for dir in services/api services/token services/devhost mcp; do
	packages+=("$FLASHPODS_REPO/$dir")
done
# --no-deps: dependencies come from the lock only. --force-reinstall: same version
# number, new code.
if [[ ${FLASHPODS_EDITABLE:-0} == 1 ]]; then
	"${pip[@]}" install --no-deps "${packages[@]/#/--editable=}"
else
	# Build from a copy: setuptools leaves build/ and *.egg-info in the tree it builds.
	copy=$(mktemp -d /var/tmp/flashpods-pkgs.XXXXXX)
	trap 'rm -rf "$copy"' EXIT
	copies=()
	for package in "${packages[@]}"; do
		cp -r "$package" "$copy/$(basename "$package")"
		copies+=("$copy/$(basename "$package")")
	done
	# The renderer's templates ship as package data of flashpods_devhost (git keeps one
	# copy, in modules/flashpods, which the NixOS module renders too).
	mkdir "$copy/devhost/flashpods_devhost/templates"
	cp "$FLASHPODS_REPO"/modules/flashpods/*.in "$copy/devhost/flashpods_devhost/templates/"
	"${pip[@]}" install --no-deps --force-reinstall "${copies[@]}"
fi
