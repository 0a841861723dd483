#!/bin/bash
# Build the dev host's job images into the Podman store the API uses (each build script
# rebuilds only when its inputs changed). The agent image is built when its script exists.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$FLASHPODS_REPO/images/worker/build.sh"
if [[ -f $FLASHPODS_REPO/images/agent/build.sh && ${FLASHPODS_SKIP_AGENT_IMAGE:-0} != 1 ]]; then
	bash "$FLASHPODS_REPO/images/agent/build.sh"
fi
