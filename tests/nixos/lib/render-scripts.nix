# The testScript of every VM test as text, rendered from the configuration
# that evaluating the test's own host modules (lib/nodes.nix's hostModules:
# the Flashpods module, the test host's settings, the test's overrides)
# produces with nixpkgs' lib against the typed stubs of tests/unit/nix. Lets
# the offline checks lint the Python the NixOS test driver would run
# (tests/unit/nix/test_nixos_scripts.py) with the option values it would see.
#   nix-instantiate --eval --strict --json tests/nixos/lib/render-scripts.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  stubs = import ../../unit/nix/stubs.nix { inherit lib; };

  inherit (stubs.pkgs.stdenv.hostPlatform) system;
  self = {
    nixosModules.default = ../../../modules/flashpods;
    packages.${system}.worker-image = stubs.fakeDrv "flashpods-worker-image" { };
  };

  # The packages need a real nixpkgs; the test scripts never read them.
  packageStandIns.services.flashpods.package = {
    api = stubs.fakeDrv "flashpods-api" { meta.mainProgram = "flashpods-api"; };
    token = stubs.fakeDrv "flashpods-token" { meta.mainProgram = "flashpods-token"; };
    init = stubs.fakeDrv "flashpods-init" { meta.mainProgram = "flashpods-init"; };
  };

  render =
    file: extra:
    let
      vmTest = import file { inherit self; };
      # nodes.host = { imports = [ hostMachine ] ++ hostModules; }
      hostModules = builtins.tail vmTest.nodes.host.imports;
      host =
        (lib.evalModules {
          modules = [
            stubs.module
            packageStandIns
          ]
          ++ hostModules
          ++ extra;
        }).config;
      failed = lib.filter (a: !a.assertion) host.assertions;
    in
    {
      script = vmTest.testScript { nodes.host = host; };
      failedAssertions = map (a: a.message) failed;
      # Where the host's services keep files and sockets: every host path a
      # script checks must be under one of these.
      hostPaths =
        let
          cfg = host.services.flashpods;
        in
        [
          cfg.storage.uploads
          cfg.storage.workspaces
          cfg.storage.artifacts
          cfg.storage.logs
          cfg.storage.db
          cfg.storage.control
          cfg.token.socket
          (builtins.dirOf cfg.token.settings.audit_log)
          cfg.podman.socket
          cfg.api.settings.spire.agent_socket
          cfg.api.settings.spire.server_socket
        ]
        ++ lib.concatMap builtins.attrNames (builtins.attrValues host.systemd.tmpfiles.settings)
        ++ map (name: "/etc/${name}") (builtins.attrNames host.environment.etc);
      units = builtins.attrNames host.systemd.services;
    };
in
{
  tunnel-and-api = render ../tunnel-and-api.nix [ ];
  container-egress = render ../container-egress.nix [ ];
  # With the stubs' pkgs.spire (1.13.3, as on nixos-25.11) and the plugin
  # package the module builds by default.
  spire-attestation = render ../spire-attestation.nix [ ];
  lifecycle = render ../lifecycle.nix [ ];
}
