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
# The ranges are explicit lines of /etc/subuid and /etc/subgid: an escaped process can
# run as any of them (a `--network host --user 1` container), so the dev host reads
# them from there when it loads the firewall and holds them to the job rules
# (flashpods_devhost.accounts.subordinate_ids; docs/security.md).
next_free_range() {
	awk -F: 'BEGIN { end = 100000 } { if ($2 + $3 > end) end = $2 + $3 } END { print end }' "$1"
}
uid=$(id -u "$FLASHPODS_USER")
for kind in uid gid; do
	file=/etc/sub$kind
	touch "$file"
	# newuidmap matches a line by name or by numeric id; both count.
	if ! grep -qE "^($FLASHPODS_USER|$uid):" "$file"; then
		start=$(next_free_range "$file")
		log "giving $FLASHPODS_USER sub${kind}s $start-$((start + 65535))"
		usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$FLASHPODS_USER"
	fi
	# Whoever owns an id inside the range could be impersonated by the job user (and
	# would be held to the job rules by the firewall): refuse such a range.
	ranges=$(awk -F: -v u="$FLASHPODS_USER" -v n="$uid" '$1 == u || $1 == n { print $2, $2 + $3 - 1 }' "$file")
	ids=$(getent "$([[ $kind == uid ]] && echo passwd || echo group)" | cut -d: -f1,3)
	while read -r first last; do
		clash=$(awk -F: -v a="$first" -v b="$last" '$2 >= a && $2 <= b { print $1 " (" $2 ")" }' <<<"$ids")
		[[ -z $clash ]] || die "sub${kind} range $first-$last of $FLASHPODS_USER in $file holds $(echo "$clash" | paste -sd, -): give $FLASHPODS_USER a range no account uses"
		log "$FLASHPODS_USER sub${kind}s: $first-$last"
	done <<<"$ranges"
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
install -d -m 0700 -o "$FLASHPODS_USER" -g "$FLASHPODS_USER" "/run/user/$uid"
