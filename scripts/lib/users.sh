#!/bin/bash
# Create the host users (docs/design.md, "Host users and groups"): flashpods runs rootless
# Podman and every job; flashpods-api and flashpods-token are system users in group
# flashpods. Idempotent.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if ! is_root; then
	log "not root: everything runs as $(id -un) (weaker boundary), no users to create"
	exit 0
fi

if ! getent passwd "$FLASHPODS_USER" >/dev/null; then
	log "creating user $FLASHPODS_USER"
	useradd --create-home --shell /bin/bash --user-group "$FLASHPODS_USER"
fi

# Rootless Podman needs sub-uid/gid ranges. Append a free range when useradd gave none.
next_free_range() {
	awk -F: 'BEGIN { end = 100000 } { if ($2 + $3 > end) end = $2 + $3 } END { print end }' "$1"
}
for kind in uid gid; do
	file=/etc/sub$kind
	touch "$file"
	if ! grep -q "^$FLASHPODS_USER:" "$file"; then
		start=$(next_free_range "$file")
		log "giving $FLASHPODS_USER sub${kind}s $start-$((start + 65535))"
		usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$FLASHPODS_USER"
	fi
done

for user in "$FLASHPODS_API_USER" "$FLASHPODS_TOKEN_USER"; do
	if ! getent passwd "$user" >/dev/null; then
		log "creating system user $user"
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin "$user"
	fi
	if ! id -nG "$user" | tr ' ' '\n' | grep -qx "$FLASHPODS_GROUP"; then
		usermod -a -G "$FLASHPODS_GROUP" "$user"
	fi
done

# No logind (no lingering): the user's runtime dir is made by hand.
uid=$(id -u "$FLASHPODS_USER")
install -d -m 0700 -o "$FLASHPODS_USER" -g "$FLASHPODS_USER" "/run/user/$uid"
