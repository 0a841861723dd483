# The `flashpods` SPIRE workload attestor plugin (spire/attestor, docs/spire.md),
# which the module's spire-agent loads as an external plugin (plugin_cmd).
#
# buildGoModule as nixos-25.11 has it (pkgs/build-support/go/module.nix): Go 1.25
# (25.11's default `go`), so spire/attestor/go.mod must say `go 1.25.x` or lower;
# CGO_ENABLED only through `env` (25.11 refuses it as a direct argument).
#
# vendorHash is the NAR hash of `go mod vendor` of the committed go.mod/go.sum,
# computed with Go and Debian's nix-bin as docs/nixos.md ("The attestor plugin's
# package and vendorHash") shows; no Nix build has confirmed it yet. The vendored
# tree is never committed. tests/integration/spire/test_attestor_vendor_hash.py recomputes it.
{ lib, buildGoModule }:
buildGoModule {
  pname = "flashpods-spire-attestor";
  version = "0.1.0";

  # The Go package alone; a vendor/ left by hand would make buildGoModule stop.
  src = lib.cleanSourceWith {
    name = "flashpods-spire-attestor-source";
    src = lib.cleanSource ../../spire/attestor;
    filter = path: _type: baseNameOf path != "vendor";
  };

  vendorHash = "sha256-Y3JgwfwThJKcuuO1FirvvWRcmThkZkL/q5fZZkxj6po=";

  # Static, like the dev host's build (scripts/lib/spire.sh): the plugin needs no libc.
  env.CGO_ENABLED = "0";
  ldflags = [
    "-s"
    "-w"
  ];

  # `go install` names the binary after the module path's last element.
  postInstall = ''
    mv $out/bin/attestor $out/bin/flashpods-spire-attestor
  '';

  meta = {
    description = "SPIRE workload attestor for Flashpods job containers (rootless Podman)";
    mainProgram = "flashpods-spire-attestor";
    platforms = lib.platforms.linux;
  };
}
