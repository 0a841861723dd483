# The NixOS VM tests (checks.<system>.vm-*), run by `nix flake check` on a
# machine with Nix and KVM. Each is named for the behaviour it proves; the
# V-numbers of docs/security.md ("Which test proves what") are in each
# file's subtests.
{ pkgs, self }:
let
  test = file: pkgs.testers.runNixOSTest (import file { inherit self; });
in
{
  vm-laptop-only-api-and-rsync = test ./tunnel-and-api.nix;
  vm-job-containers-reach-only-the-internet = test ./container-egress.nix;
  vm-retention-crash-safety-no-leaks = test ./lifecycle.nix;
  # SPIRE with the flashpods attestor plugin, on the pin's own pkgs.spire.
  vm-spire-attested-secrets = test ./spire-attestation.nix;
}
