# Stand-ins for the parts of NixOS and nixpkgs that modules/flashpods touches,
# so the module's own options, defaults and assertions evaluate with nothing
# but nixpkgs' `lib` (no nixpkgs package set, no NixOS module tree). Types
# mirror the real ones where merging matters: lists concatenate, attribute
# sets merge per key with priorities, the JSON type is pkgs.formats.json's.
{ lib }:
let
  inherit (lib) types mkOption;

  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta = { };
  }
  // extra;

  freeform = types.lazyAttrsOf types.anything;
  freeformWith =
    options:
    types.submodule {
      freeformType = freeform;
      inherit options;
    };
  optionSet =
    options:
    mkOption {
      type = freeformWith options;
      default = { };
    };
  listOption = mkOption {
    type = types.listOf types.anything;
    default = [ ];
  };

  # pkgs.formats.json's value type, rebuilt from lib alone.
  jsonValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonValue)
        (types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };

  pkgs = {
    path = "/nonexistent-nixpkgs";
    formats.json = _: {
      type = jsonValue;
      # The "store path" of a generated file is its content, so a test reads
      # exactly what a service would be given wherever the path is used.
      generate = name: value: fakeDrv name { outPath = builtins.toJSON value; };
    };
    writeText = name: text: fakeDrv name { outPath = text; };
    python3.withPackages = _: fakeDrv "python3-env" { };
    spire = fakeDrv "spire-1.14.1" {
      version = "1.14.1";
      agent = fakeDrv "spire-agent" { };
    };
    rsync = fakeDrv "rsync" { meta.mainProgram = "rsync"; };
    podman = fakeDrv "podman" { meta.mainProgram = "podman"; };
    gawk = fakeDrv "gawk" { };
    jq = fakeDrv "jq" { };
    coreutils = fakeDrv "coreutils" { };
    shadow = fakeDrv "shadow" { };
  };

  serviceType = freeformWith {
    after = listOption;
    before = listOption;
    requires = listOption;
    wants = listOption;
    wantedBy = listOption;
    path = listOption;
    restartTriggers = listOption;
    environment = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
    serviceConfig = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
  };
in
{
  inherit pkgs fakeDrv;

  module = {
    config._module.args.pkgs = pkgs;

    options = {
      assertions = listOption;
      warnings = listOption;

      networking = optionSet {
        hostName = mkOption {
          type = types.str;
          default = "testhost";
        };
        nameservers = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };

      services.openssh = optionSet {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        ports = mkOption {
          type = types.listOf types.port;
          default = [ 22 ];
        };
        openFirewall = mkOption {
          type = types.bool;
          default = true;
        };
      };

      services.spire = optionSet {
        server = optionSet {
          settings = optionSet {
            server = optionSet {
              socket_path = mkOption {
                type = types.str;
                default = "/run/spire/server/private/api.sock";
              };
            };
          };
        };
        agent = optionSet {
          settings = optionSet {
            agent = optionSet {
              socket_path = mkOption {
                type = types.str;
                default = "/run/spire/agent/public/api.sock";
              };
            };
          };
        };
      };

      # nixos/modules/config/sysctl.nix: boot.kernel.sysctl, an attribute set of
      # sysctl values (null drops a key).
      boot = optionSet {
        kernel = optionSet {
          sysctl = mkOption {
            type = types.attrsOf (
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.str
                  types.int
                ]
              )
            );
            default = { };
          };
        };
      };

      virtualisation = optionSet {
        podman = optionSet {
          package = mkOption {
            type = types.package;
            default = pkgs.podman;
          };
        };
      };

      users = optionSet {
        users = mkOption {
          type = types.attrsOf (freeformWith {
            extraGroups = listOption;
          });
          default = { };
        };
        groups = mkOption {
          type = types.attrsOf freeform;
          default = { };
        };
      };

      systemd = optionSet {
        services = mkOption {
          type = types.attrsOf serviceType;
          default = { };
        };
        tmpfiles.settings = mkOption {
          type = types.attrsOf (types.attrsOf (types.attrsOf freeform));
          default = { };
        };
      };

      environment = optionSet {
        systemPackages = listOption;
        etc = mkOption {
          type = types.attrsOf freeform;
          default = { };
        };
      };
    };
  };
}
