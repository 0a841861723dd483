#!/bin/bash
# SPIRE for the dev host and the tests: spire-server and spire-agent built from the Go
# module proxy, and the flashpods workload attestor plugin (spire/attestor) built from
# this checkout. Debian has no SPIRE package; nixpkgs' SPIRE is used on NixOS.
#
#   bash scripts/lib/spire.sh           install (cheap when cached), then print
#                                       spire_server=, spire_agent=, attestor= paths
#   bash scripts/lib/spire.sh attestor  only the plugin (print attestor=)
#
# Cached outside the clone, by version, under $FLASHPODS_SPIRE_CACHE (default
# /var/cache/flashpods/spire):
#   <version>/bin/{spire-server,spire-agent}  SPIRE itself (a cold build downloads a
#                                             few hundred modules: tens of minutes)
#   attestor/<sha256>/flashpods-spire-attestor the plugin, keyed by its sources and Go
# spire-agent and the plugin are static (CGO_ENABLED=0): spire-agent also runs inside
# the busybox worker image (`spire-agent api fetch jwt`). spire-server keeps cgo for its
# SQLite datastore.
#
# FLASHPODS_SPIRE_GOMODCACHE / FLASHPODS_SPIRE_GOCACHE point Go's module and build
# caches elsewhere (e.g. at a warm cache); defaults are under the cache directory.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SPIRE_VERSION=${FLASHPODS_SPIRE_VERSION:-v1.13.3}
cache=${FLASHPODS_SPIRE_CACHE:-/var/cache/flashpods/spire}
attestor_src=$FLASHPODS_REPO/spire/attestor

go_bin=$(command -v go || true)
[[ -z $go_bin && -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go
[[ -n $go_bin ]] || die "Go not found: install Go 1.25 or newer (https://go.dev/dl) into /usr/local/go or PATH"

export GOMODCACHE=${FLASHPODS_SPIRE_GOMODCACHE:-$cache/gomod}
export GOCACHE=${FLASHPODS_SPIRE_GOCACHE:-$cache/gocache}
export GOPATH=$cache/gopath
# The local Go only (no silent toolchain downloads); the module cache stays removable.
export GOTOOLCHAIN=local GOFLAGS=-modcacherw

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time; a second caller finds the cache filled

install_spire() {
	local dir=$cache/$SPIRE_VERSION
	if [[ -f $dir/complete && -x $dir/bin/spire-server && -x $dir/bin/spire-agent ]]; then
		return
	fi
	log "building SPIRE $SPIRE_VERSION into $dir (cold: tens of minutes)"
	local started=$SECONDS
	rm -rf "$dir/bin.new"
	mkdir -p "$dir/mod" "$dir/bin.new"
	(
		cd "$dir/mod"
		[[ -f go.mod ]] || "$go_bin" mod init scratch/spire
		"$go_bin" get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION"
		"$go_bin" get -tool "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION"
		GOBIN=$dir/bin.new "$go_bin" install github.com/spiffe/spire/cmd/spire-server
		CGO_ENABLED=0 GOBIN=$dir/bin.new "$go_bin" install github.com/spiffe/spire/cmd/spire-agent
	)
	rm -rf "${dir:?}/bin"
	mv "$dir/bin.new" "$dir/bin"
	echo "$SPIRE_VERSION" >"$dir/complete"
	log "SPIRE $SPIRE_VERSION built ($((SECONDS - started)) s)"
}

# Everything that changes the plugin binary goes into its cache key.
attestor_key() {
	{
		"$go_bin" version
		cd "$attestor_src"
		for f in go.mod go.sum *.go; do
			[[ $f == *_test.go ]] && continue
			echo "== $f"
			cat "$f"
		done
	} | sha256sum | cut -d' ' -f1
}

install_attestor() {
	local dir
	dir=$cache/attestor/$(attestor_key)
	attestor=$dir/flashpods-spire-attestor
	[[ -x $attestor ]] && return
	log "building the flashpods attestor plugin into $dir"
	mkdir -p "$dir"
	(cd "$attestor_src" && CGO_ENABLED=0 "$go_bin" build -trimpath -o "$attestor.new" .)
	mv "$attestor.new" "$attestor"
}

install_attestor
if [[ ${1:-} == attestor ]]; then
	echo "attestor=$attestor"
	exit 0
fi
install_spire
echo "spire_server=$cache/$SPIRE_VERSION/bin/spire-server"
echo "spire_agent=$cache/$SPIRE_VERSION/bin/spire-agent"
echo "attestor=$attestor"
