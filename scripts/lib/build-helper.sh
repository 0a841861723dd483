#!/bin/sh
# Builds flashpods-init, the static in-container helper (images/helper/), into
# /opt/flashpods/lib/flashpods-init (root-owned, 0755), or into the path given
# as $1 or $FLASHPODS_HELPER_OUT (tests build into a temporary directory).
#
# The binary embeds a SHA-256 of its sources and compiler flags and prints it
# with --version: when that matches, nothing is rebuilt. Set
# FLASHPODS_HELPER_FORCE=1 to rebuild anyway. Needs gcc and the static glibc
# (libc6-dev); glibc static is fine because the helper uses no NSS.
set -eu

src_dir=$(cd "$(dirname "$0")/../../images/helper" && pwd)
out=${1:-${FLASHPODS_HELPER_OUT:-/opt/flashpods/lib/flashpods-init}}
cc=${CC:-gcc}
cflags="-D_GNU_SOURCE -static -O2 -Wall -Wextra -Werror"

# The compiler and the static C library: installed here on a fresh Debian
# machine when running as root, otherwise the error says what to install.
# musl-tools is for tests/unit/helper, which also build the sources with musl
# the way the Nix package (pkgsStatic) does.
libc_a=$("$cc" -print-file-name=libc.a 2>/dev/null || true)
if ! command -v "$cc" >/dev/null 2>&1 || [ ! -f "$libc_a" ] || ! command -v musl-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build-helper: installing gcc, libc6-dev and musl-tools" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev musl-tools >&2
    fi
fi
command -v "$cc" >/dev/null 2>&1 || {
    echo "build-helper: $cc not found; install gcc and libc6-dev (apt-get install gcc libc6-dev)" >&2
    exit 1
}

# Everything that changes the binary goes into the hash: the flags, the
# compiler's version and every source file (name and contents), in a fixed order.
hash=$(
    {
        echo "$cflags"
        "$cc" --version | head -n 1
        for f in "$src_dir"/*.c "$src_dir"/*.h; do
            echo "== $(basename "$f")"
            cat "$f"
        done
    } | sha256sum | cut -d' ' -f1
)

if [ "${FLASHPODS_HELPER_FORCE:-0}" != 1 ] && [ -x "$out" ] &&
    "$out" --version 2>/dev/null | grep -q "source-sha256 $hash\$"; then
    echo "build-helper: $out is up to date ($hash)"
    exit 0
fi

out_dir=$(dirname "$out")
mkdir -p "$out_dir"
tmp=$(mktemp "$out_dir/.flashpods-init.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# shellcheck disable=SC2086 # cflags is a list of words
"$cc" $cflags -DFLASHPODS_SRC_HASH="\"$hash\"" -o "$tmp" "$src_dir"/*.c
# A static binary must run in images without a dynamic loader or libc.
if command -v file >/dev/null 2>&1 && ! file "$tmp" | grep -q 'statically linked'; then
    echo "build-helper: $cc did not produce a static binary; install the static C library (libc6-dev)" >&2
    exit 1
fi
chmod 0755 "$tmp"
if [ "$(id -u)" = 0 ]; then
    chown root:root "$tmp"
fi
# rename(2) so a container starting right now sees the old or the new binary, never half of one.
mv -f "$tmp" "$out"
trap - EXIT
echo "build-helper: built $out ($hash)"
