#!/bin/bash
# Offline checks of the Nix code. The machines that build this project have no Nix
# binary cache and no GitHub, so nothing here builds a derivation or fetches nixpkgs:
#   1. parse   every .nix file with `nix-instantiate --parse` (Debian's nix-bin);
#   2. eval    flake.lock, flake.nix and the pyproject.toml files the Nix packages
#              read, with Nix builtins only (tests/unit/nix/eval-offline.nix);
#   3. module  the NixOS module's own options, defaults, generated configs and
#              assertions with lib.evalModules against typed stubs of the nixpkgs
#              options it uses (tests/unit/nix/eval-module.nix), modules/hosts/
#              example.nix with no failed assertion, the flake's outputs, the VM
#              tests' scripts rendered from their hosts' configurations, and the
#              ruleset the module renders with `nft -c` in a fresh network
#              namespace. Needs a copy of nixpkgs' lib: FLASHPODS_NIXPKGS_LIB, or
#              else ../shared/nixpkgs-lib beside the repository (CI keeps one
#              there); skipped with a message when there is neither;
#   4. format  `nixfmt --check` when nixfmt is installed (Debian 12 has no package;
#              `nix fmt` / `nix flake check` run it on a machine with Nix).
# Usage: check-nix.sh [parse|eval|module|format]...   (default: all four)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$FLASHPODS_REPO"

command -v nix-instantiate >/dev/null ||
	die "nix-instantiate not found: install Debian's nix-bin (scripts/lib/packages.sh installs it)"

failed=()
step() { printf -- '--- nix %s\n' "$*"; }

nix_files() {
	find . -name '*.nix' -not -path './.git/*' -not -path './result*' -type f | sort
}

check_parse() {
	step "parse: nix-instantiate --parse on every .nix file"
	local file count=0 bad=0
	while IFS= read -r file; do
		count=$((count + 1))
		if ! nix-instantiate --parse "$file" >/dev/null; then
			log "does not parse: $file"
			bad=$((bad + 1))
		fi
	done < <(nix_files)
	echo "parsed $count files, $bad failed"
	((bad == 0))
}

check_eval() {
	step "eval: flake.lock, flake.nix, pyproject.toml (builtins only)"
	nix-instantiate --eval --strict tests/unit/nix/eval-offline.nix >/dev/null
	echo "ok"
}

# The directory of nixpkgs' lib (the one holding lib/default.nix), or empty:
# FLASHPODS_NIXPKGS_LIB, else ../shared/nixpkgs-lib beside the repository. The
# pytest side (tests/unit/nix/nixlib.py) looks in the same places.
nixpkgs_lib() {
	local dir=${FLASHPODS_NIXPKGS_LIB:-$FLASHPODS_REPO/../shared/nixpkgs-lib}
	if [[ -f $dir/default.nix && ! -f $dir/lib/default.nix ]]; then
		dir=$(dirname "$dir") # pointed at lib/ itself
	fi
	[[ -f $dir/lib/default.nix ]] && realpath "$dir"
	return 0
}

check_module() {
	step "module: lib.evalModules of modules/flashpods (options, configs, assertions)"
	local lib_dir
	lib_dir=$(nixpkgs_lib)
	if [[ -z $lib_dir ]]; then
		local where=${FLASHPODS_NIXPKGS_LIB:-$FLASHPODS_REPO/../shared/nixpkgs-lib}
		echo "SKIPPED (only this step: lib.evalModules of the module, packages and flake):" \
			"needs a copy of nixpkgs lib, which cannot be fetched here; none at $where." \
			"Set FLASHPODS_NIXPKGS_LIB to a checkout of nix-community/nixpkgs.lib (the" \
			"directory that holds lib/default.nix) to run it."
		return 0
	fi
	local out
	out=$(mktemp)
	# shellcheck disable=SC2064  # expand now: the file name is fixed
	trap "rm -f '$out' '$out.nft' '$out.scripts'" RETURN
	nix-instantiate --eval --strict --json tests/unit/nix/eval-module.nix \
		--arg nixpkgsLib "$lib_dir/lib" >"$out"
	jq -e '.valid.failedAssertions == []' "$out" >/dev/null ||
		{
			log "a valid configuration fails assertions: $(jq -c .valid.failedAssertions "$out")"
			return 1
		}
	jq -e '.broken.missingEverything | length == 3' "$out" >/dev/null ||
		{
			log "missing settings are not all reported: $(jq -c .broken.missingEverything "$out")"
			return 1
		}
	# The credential proxy: its unit from the package, its CA as credentials, and a
	# secret with neither a host rule nor an env-delivery opt-in refused by name.
	jq -e '.valid.units["flashpods-proxy"].serviceConfig as $s |
		($s.ExecStart | endswith("/bin/flashpods-proxy")) and
		($s.LoadCredential | index("ca-key.pem:/var/lib/flashpods/proxy-ca/ca-key.pem")) != null and
		.valid.proxyConfig.proxy.ca_key_file == "/run/credentials/flashpods-proxy.service/ca-key.pem" and
		(.broken.secretWithoutRule | any(contains("SLACK_TOKEN has no host rule")))' "$out" >/dev/null ||
		{
			log "the credential proxy unit, its CA credential or the rule-less secret check is wrong: $(jq -c '[.valid.units["flashpods-proxy"].serviceConfig.LoadCredential, .broken.secretWithoutRule]' "$out")"
			return 1
		}
	jq -e '.valid.everythingChecked and .example.everythingChecked' "$out" >/dev/null ||
		{
			log "the module's configuration does not evaluate in full on the typed stubs"
			return 1
		}
	# SPIRE on nixos-25.11's SPIRE: the agent loads the flashpods plugin from the
	# package the module builds, and that package's vendorHash is the documented one.
	local plugin_check vendor_hash
	plugin_check='.spire["1.13.3"] | .failedAssertions == [] and
		.agentConfig.plugins.WorkloadAttestor.flashpods.plugin_cmd ==
			"\(.attestor.storePath)/bin/\(.attestor.mainProgram)"'
	jq -e "$plugin_check" "$out" >/dev/null ||
		{
			log "the SPIRE agent config does not load the flashpods plugin from its package: $(jq -c '.spire["1.13.3"] | [.failedAssertions, .agentConfig.plugins.WorkloadAttestor]' "$out")"
			return 1
		}
	vendor_hash=$(jq -r '.spire["1.13.3"].attestor.goModuleArgs.vendorHash' "$out")
	sed -n "/^### The attestor plugin's package and vendorHash/,/^#/p" docs/nixos.md | grep -qF "\`$vendor_hash\`" ||
		{
			log "modules/pkgs/spire-attestor.nix's vendorHash $vendor_hash is not the one docs/nixos.md gives (\"The attestor plugin's package and vendorHash\"): recompute it as shown there and update both"
			return 1
		}
	jq -e '.example.failedAssertions == []' "$out" >/dev/null ||
		{
			log "modules/hosts/example.nix fails assertions: $(jq -c .example.failedAssertions "$out")"
			return 1
		}
	nix-instantiate --eval --strict tests/unit/nix/eval-packages.nix \
		--arg nixpkgsLib "$lib_dir/lib" >/dev/null
	nix-instantiate --readonly-mode --eval --strict tests/unit/nix/eval-flake.nix \
		--arg nixpkgsLib "$lib_dir/lib" >/dev/null
	nix-instantiate --eval --strict --json tests/nixos/lib/render-scripts.nix \
		--arg nixpkgsLib "$lib_dir/lib" >"$out.scripts"
	jq -e '[.[].failedAssertions[]] == []' "$out.scripts" >/dev/null ||
		{
			log "a VM test's host fails assertions: $(jq -c 'map_values(.failedAssertions)' "$out.scripts")"
			return 1
		}
	echo "evaluated the module, the example host, the Python packages, the flake's" \
		"outputs and the VM tests' hosts with $lib_dir"

	step "module: nft -c of the ruleset the module renders (fresh network namespace)"
	if ! is_root || ! command -v nft >/dev/null || ! command -v unshare >/dev/null; then
		echo "SKIPPED: needs root, nft and unshare"
		return 0
	fi
	jq -r '.valid.firewall' "$out" >"$out.nft"
	unshare --net nft -c -f "$out.nft"
	echo "ok"
}

check_format() {
	step "format: nixfmt --check"
	if ! command -v nixfmt >/dev/null; then
		echo "SKIPPED: nixfmt is not installed (Debian 12, PyPI and npm have none): the" \
			"layout of the .nix files is kept by hand and UNVERIFIED here; \`nix fmt\` and" \
			"\`nix flake check\` (checks.formatting) run it on a machine with Nix."
		return 0
	fi
	local files
	mapfile -t files < <(nix_files)
	nixfmt --check "${files[@]}"
}

steps=("$@")
((${#steps[@]})) || steps=(parse eval module format)
for name in "${steps[@]}"; do
	case $name in
	parse | eval | module | format) "check_$name" || failed+=("$name") ;;
	*) die "unknown step '$name': use parse, eval, module or format" ;;
	esac
done

if ((${#failed[@]})); then
	log "failed: ${failed[*]}"
	exit 1
fi
echo "nix checks passed: ${steps[*]}"
