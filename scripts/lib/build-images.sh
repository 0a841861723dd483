#!/bin/bash
# Build the dev host's job images into the Podman store the API uses (each build script
# rebuilds only when its inputs changed). FLASHPODS_SKIP_AGENT_IMAGE=1 skips the agent image.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$FLASHPODS_REPO/images/worker/build.sh"
if [[ ${FLASHPODS_SKIP_AGENT_IMAGE:-0} != 1 ]]; then
	bash "$FLASHPODS_REPO/images/agent/build.sh"
fi
