#!/bin/bash
# Build the dev host's sub-agent image, localhost/flashpods-agent:latest, into the
# flashpods user's Podman store: a Debian bookworm minbase rootfs (debootstrap, from the
# Debian mirror this machine's apt already uses; no registry is reachable) with python3,
# ca-certificates, curl, git, ripgrep, gh (the GitHub CLI), Claude Code's native binary
# from npm and our entrypoint (images/agent/entrypoint -> /flashpods/agent/entrypoint).
#
# Cached: the image carries a label with the hash of its inputs (this script, the
# entrypoint, the pinned Claude Code version, the mirror); a stamp file under the cache
# dir records the same. When both match and the image exists, nothing is rebuilt.
#
# Usage: images/agent/build.sh [--force]
# Environment (all optional):
#   FLASHPODS_AGENT_IMAGE          image name (default localhost/flashpods-agent:latest)
#   FLASHPODS_CLAUDE_CODE_VERSION  npm version of @anthropic-ai/claude-code (pinned below)
#   FLASHPODS_IMAGE_CACHE          work dir (default /var/cache/flashpods/agent-image)
#   FLASHPODS_PODMAN_USER          store owner when run as root (default flashpods)
#   FLASHPODS_DEBIAN_MIRROR        override the mirror read from /etc/apt/sources.list*
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
image=${FLASHPODS_AGENT_IMAGE:-localhost/flashpods-agent:latest}
claude_version=${FLASHPODS_CLAUDE_CODE_VERSION:-2.1.330}
cache=${FLASHPODS_IMAGE_CACHE:-/var/cache/flashpods/agent-image}
podman_user=${FLASHPODS_PODMAN_USER:-flashpods}
suite=bookworm
packages=python3,ca-certificates,curl,git,ripgrep,gh
force=0
[[ ${1:-} == --force ]] && force=1

log() { printf 'build-agent-image: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Run podman against the store the API uses: as root, the flashpods user's rootless store;
# otherwise (a dev host run by a normal user) the caller's own store.
podman_as_owner() {
	if [[ $(id -u) -eq 0 ]]; then
		local home uid
		home=$(getent passwd "$podman_user" | cut -d: -f6) || die "user $podman_user does not exist; create it (scripts/lib) or set FLASHPODS_PODMAN_USER"
		uid=$(id -u "$podman_user")
		(cd / && runuser -u "$podman_user" -- env -i HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
			PATH=/usr/bin:/bin podman "$@")
	else
		podman "$@"
	fi
}

# The Debian mirror apt is configured with (deb822 .sources or one-line .list files).
debian_mirror() {
	if [[ -n ${FLASHPODS_DEBIAN_MIRROR:-} ]]; then
		echo "$FLASHPODS_DEBIAN_MIRROR"
		return
	fi
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
		if [[ -n $uri ]] && grep -q "^Suites:.*\b$suite\b" "$f"; then
			echo "$uri"
			return
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		uri=$(awk -v s="$suite" '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $(i + 1) == s) {print $i; exit}}' "$f")
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	die "no Debian $suite mirror found in /etc/apt/sources.list(.d); set FLASHPODS_DEBIAN_MIRROR"
}

for tool in debootstrap npm tar sha256sum flock; do
	command -v "$tool" >/dev/null || die "$tool is missing; install it (apt-get install debootstrap npm)"
done
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root; run this script as root"

mirror=$(debian_mirror)
inputs_hash=$(
	{
		sha256sum "$here/build.sh" "$here/entrypoint" | cut -d' ' -f1
		echo "claude-code=$claude_version mirror=$mirror suite=$suite packages=$packages"
	} | sha256sum | cut -c1-32
)
stamp=$cache/stamp

# One build at a time (CI's setup and a test fixture may both ask for the image): a second
# caller waits, then finds the image up to date.
mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w 1800 9 || die "another build of the agent image holds $cache/lock for over 30 min"

current_label=$(podman_as_owner image inspect --format '{{index .Labels "flashpods.inputs"}}' "$image" 2>/dev/null || true)
if [[ $force -eq 0 && $current_label == "$inputs_hash" && -f $stamp && $(cat "$stamp") == "$inputs_hash" ]]; then
	log "$image is up to date (inputs $inputs_hash)"
	exit 0
fi

start=$SECONDS
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. Claude Code from npm, staged outside the repo. The package ships one native,
#    glibc-linked binary per platform in an optional dependency; we take it directly.
log "npm: @anthropic-ai/claude-code@$claude_version"
mkdir -p "$work/npm" "$cache/npm-cache"
(cd "$work/npm" && npm install --no-save --no-package-lock --ignore-scripts --loglevel=error \
	--cache "$cache/npm-cache" "@anthropic-ai/claude-code@$claude_version" >&2)
claude_bin=$work/npm/node_modules/@anthropic-ai/claude-code-linux-x64/claude
[[ -x $claude_bin ]] || die "npm did not install the linux-x64 native binary of claude-code $claude_version (expected $claude_bin)"

# 2. The Debian rootfs. The bare debootstrap result is cached on its own (keyed by mirror,
#    suite and packages), so changing the entrypoint or Claude Code does not bootstrap again;
#    downloaded .debs are kept too.
base_hash=$(echo "mirror=$mirror suite=$suite packages=$packages" | sha256sum | cut -c1-16)
base=$cache/base-$base_hash
if [[ ! -f $base/.complete ]]; then
	log "debootstrap $suite minbase from $mirror (+ $packages)"
	rm -rf "$base" "$base.tmp"
	mkdir -p "$cache/debs"
	debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
		"$suite" "$base.tmp" "$mirror" >"$work/debootstrap.log" 2>&1 ||
		{
			tail -n 30 "$work/debootstrap.log" >&2
			die "debootstrap failed (log above)"
		}
	# Trim what a container never needs (apt lists, docs, caches).
	rm -rf "$base.tmp"/var/lib/apt/lists/* "$base.tmp"/var/cache/apt/* "$base.tmp"/usr/share/doc/* \
		"$base.tmp"/usr/share/man/* "$base.tmp"/usr/share/info/* "$base.tmp"/var/log/*
	touch "$base.tmp/.complete"
	mv "$base.tmp" "$base"
fi
rootfs=$work/rootfs
cp -a "$base" "$rootfs"
rm -f "$rootfs/.complete"

# 3. Our files. Claude Code is found on PATH as `claude`; the entrypoint is what the
#    API's agent.command names by default.
install -D -m 0755 "$claude_bin" "$rootfs/usr/local/bin/claude"
install -D -m 0755 "$here/entrypoint" "$rootfs/flashpods/agent/entrypoint"
mkdir -p "$rootfs/flashpods/bin" "$rootfs/workspace" "$rootfs/artifacts" "$rootfs/run/flashpods"
chmod 1777 "$rootfs/tmp"

# 4. Import into the store the API uses. The tar goes through stdin so the store owner
#    never needs to read our work dir.
log "podman import -> $image"
version_label="flashpods.claude-code=$claude_version"
old_id=$(podman_as_owner image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
tar -C "$rootfs" --numeric-owner -cf - . | podman_as_owner import \
	--change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
	--change "ENV HOME=/tmp/home" \
	--change "ENV TMPDIR=/tmp" \
	--change "ENV LANG=C.UTF-8" \
	--change "WORKDIR /workspace" \
	--change "CMD [\"/flashpods/agent/entrypoint\"]" \
	--change "LABEL flashpods.inputs=$inputs_hash" \
	--change "LABEL $version_label" \
	- "$image" >/dev/null 2>"$work/import.log" ||
	{
		cat "$work/import.log" >&2
		die "podman import failed (log above)"
	}
# The previous build is now untagged; drop it unless a container still uses it.
if [[ -n $old_id ]]; then
	podman_as_owner image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "$inputs_hash" >"$stamp"
log "built $image (inputs $inputs_hash) in $((SECONDS - start)) s"
