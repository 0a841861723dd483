# Evaluates flake.nix's outputs function with a stand-in nixpkgs input (real
# lib, fake package set) and lists what the flake provides, without building or
# fetching anything: catches a misnamed or missing output offline.
# --readonly-mode: source paths interpolated into a check get their store
# path computed, not copied.
#   nix-instantiate --readonly-mode --eval --strict --json \
#     tests/unit/nix/eval-flake.nix --arg nixpkgsLib /path/to/nixpkgs.lib/lib
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  flake = import ../../../flake.nix;
  fakePkgs = system: {
    inherit system lib;
    stdenv.hostPlatform.system = system;
    nixfmt = "nixfmt";
    # What a check would run: its command, to see what reaches the sandbox.
    runCommand = name: env: command: { inherit name env command; };
  };
  nixpkgs = {
    lib = lib // {
      nixosSystem = args: {
        inherit (args) system;
        modules = map toString args.modules;
      };
    };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] fakePkgs;
  };
  self = flake.outputs {
    inherit self nixpkgs;
  };
in
{
  outputs = builtins.attrNames self;
  systems = builtins.attrNames self.packages;
  packages = builtins.attrNames self.packages.x86_64-linux;
  checks = builtins.attrNames self.checks.x86_64-linux;
  apps = builtins.attrNames self.apps.x86_64-linux;
  devShells = builtins.attrNames self.devShells.x86_64-linux;
  nixosModules = builtins.attrNames self.nixosModules;
  moduleIsTheDirectory = toString self.nixosModules.default == toString ../../../modules/flashpods;
  example = self.nixosConfigurations.example;
  # checks.formatting: the sources reach the build only as a string context.
  formatting =
    let
      inherit (self.checks.x86_64-linux.formatting) command;
    in
    {
      inherit command;
      hasContext = builtins.hasContext command;
      context = builtins.attrNames (builtins.getContext command);
    };
}
