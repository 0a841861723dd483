# Every package of the flake, built from a plain nixpkgs `pkgs`. Used by the
# flake's `packages` output and by the module's option defaults, so a host
# that imports only nixosModules.default still builds them the same way.
{ pkgs, lib }:
let
  # claude-code is unfree. Allow exactly that package, here only, instead of
  # asking the whole host (or the flake) to set allowUnfree.
  pkgsWithClaudeCode = import pkgs.path {
    inherit (pkgs.stdenv.hostPlatform) system;
    config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";
  };

  pythonApp =
    src: importName:
    pkgs.callPackage ./python-app.nix {
      inherit src importName;
    };
in
rec {
  flashpods-api = pythonApp ../../services/api "flashpods_api";
  flashpods-token = pythonApp ../../services/token "flashpods_token";
  flashpods-mcp = pythonApp ../../mcp "flashpods_mcp";
  flashpods-devhost = pythonApp ../../services/devhost "flashpods_devhost";

  flashpods-init = pkgs.callPackage ./flashpods-init.nix { };
  flashpods-spire-attestor = pkgs.callPackage ./spire-attestor.nix { };

  inherit
    (pkgs.callPackage ./images.nix {
      inherit flashpods-init;
      inherit (pkgsWithClaudeCode) claude-code;
    })
    worker-image
    agent-image
    ;
}
