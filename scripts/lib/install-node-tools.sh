#!/bin/bash
# Third-party MCP clients the MCP tests drive for real, from the npm registry only:
#   - the MCP Inspector's CLI mode (mcp-inspector --cli …)
#   - Claude Code (claude mcp add / claude mcp list; no model is needed for that)
# Installed into /opt/flashpods/node (FLASHPODS_NODE_TOOLS), bins in its bin/ directory.
# Idempotent: a stamp with the pinned versions skips the install when nothing changed.
#
# Pins: the Inspector's 0.16+ and 2.x lines declare node >= 22, Debian's node here is 20,
# so the 0.15 line (same --cli interface) is used. Claude Code ships a native binary in
# a per-platform optional dependency; it is linked as bin/claude directly, so its own
# postinstall script (which would reach beyond the npm registry) never has to run.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

prefix=${FLASHPODS_NODE_TOOLS:-/opt/flashpods/node}
inspector_version=${FLASHPODS_INSPECTOR_VERSION:-0.15.0}
claude_version=${FLASHPODS_CLAUDE_CODE_VERSION:-2.1.330}
stamp=$prefix/.flashpods-node-tools
want="inspector=$inspector_version claude-code=$claude_version"

command -v npm >/dev/null || die "npm is missing; install it (apt-get install npm)"
if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $prefix/bin/claude && -x $prefix/bin/mcp-inspector ]]; then
	exit 0
fi

umask 022
mkdir -p "$prefix/bin"
log "npm: @modelcontextprotocol/inspector@$inspector_version @anthropic-ai/claude-code@$claude_version into $prefix"
# --ignore-scripts: nothing runs at install time; what we need is linked below.
npm install --prefix "$prefix" --no-save --no-package-lock --no-audit --no-fund \
	--ignore-scripts --loglevel=error \
	"@modelcontextprotocol/inspector@$inspector_version" \
	"@anthropic-ai/claude-code@$claude_version" >&2

modules=$prefix/node_modules
inspector=$modules/@modelcontextprotocol/inspector
inspector_bin=$(cd "$inspector" && node -p 'const b=require("./package.json").bin; typeof b==="string"?b:(b["mcp-inspector"]||Object.values(b)[0])')
[[ -f $inspector/$inspector_bin ]] || die "the Inspector package has no CLI entry ($inspector/$inspector_bin)"
ln -sfn "$inspector/$inspector_bin" "$prefix/bin/mcp-inspector"
chmod 0755 "$inspector/$inspector_bin"

claude_native=$modules/@anthropic-ai/claude-code-linux-x64/claude
[[ -x $claude_native ]] || die "npm did not install the linux-x64 native binary of Claude Code (expected $claude_native)"
ln -sfn "$claude_native" "$prefix/bin/claude"

printf '%s\n' "$want" >"$stamp"
log "installed: $prefix/bin/mcp-inspector, $prefix/bin/claude ($("$prefix/bin/claude" --version 2>/dev/null || echo '?'))"
