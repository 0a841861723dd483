#!/bin/bash
# Everything a dev host or a test run needs, in order; each step is idempotent and
# skips what is already done, so this is cheap to run every time.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

lib=$FLASHPODS_REPO/scripts/lib
step() {
	local started=$SECONDS
	"$@"
	log "done: ${*##*/} ($((SECONDS - started)) s)"
}

step bash "$lib/packages.sh"
step bash "$lib/users.sh"
step bash "$lib/podman.sh"
step bash "$lib/venv.sh"
if is_root; then
	step sh "$lib/build-helper.sh"
else
	log "not root: build-helper.sh writes /opt/flashpods/lib; skipped"
fi
step bash "$lib/build-images.sh"
# Third-party MCP clients (Inspector CLI, Claude Code) the MCP tests drive: only for
# scripts/test (it sets FLASHPODS_SETUP_TEST_TOOLS=1), a dev host does not need them.
if [[ ${FLASHPODS_SETUP_TEST_TOOLS:-0} == 1 ]]; then
	step bash "$lib/install-node-tools.sh"
fi
# Real SPIRE (spire-server, spire-agent v1.13.3 from the Go module proxy) and the
# flashpods attestor plugin, for the tests in tests/integration/spire: cached by version
# under /var/cache/flashpods/spire. Cold on a fresh 2-core machine: ~1,030 s of CPU
# (~10-13 min); cached: well under a second.
if [[ ${FLASHPODS_SETUP_TEST_TOOLS:-0} == 1 ]]; then
	step bash "$lib/spire.sh"
fi
