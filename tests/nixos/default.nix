# The NixOS VM tests (checks.<system>.vm-*), run by `nix flake check` on a
# machine with Nix and KVM. Each is named for the behaviour it proves; the
# V-numbers of docs/security.md ("Which test proves what") are in each
# file's subtests.
{ pkgs, self }:
let
  inherit (pkgs) lib;
  test = file: pkgs.testers.runNixOSTest (import file { inherit self; });
in
{
  vm-laptop-only-api-and-rsync = test ./tunnel-and-api.nix;
  vm-job-containers-reach-only-the-internet = test ./container-egress.nix;
  vm-retention-crash-safety-no-leaks = test ./lifecycle.nix;
}
# SPIRE attests rootless Podman jobs from 1.15.0 on (modules/flashpods/spire.nix
# asserts it). nixos-25.11 ships 1.13.x, so there this check does not exist
# rather than fail evaluation; the other tests run with peer attestation.
// lib.optionalAttrs (lib.versionAtLeast pkgs.spire.version "1.15.0") {
  vm-spire-attested-secrets = test ./spire-attestation.nix;
}
