# Checks that need nothing but Nix's builtins (no nixpkgs): the lock file pins
# a real-looking revision, the flake's input agrees with it, and every Python
# package's pyproject.toml reads the way modules/pkgs/python-app.nix reads it.
# Evaluates to true or throws a message saying what is wrong.
#   nix-instantiate --eval --strict tests/unit/nix/eval-offline.nix
let
  root = ../../..;
  check = ok: message: if ok then true else throw "flashpods nix check: ${message}";
  all = builtins.all (x: x);

  lock = builtins.fromJSON (builtins.readFile (root + "/flake.lock"));
  pin = lock.nodes.nixpkgs;
  flake = import (root + "/flake.nix");

  lockChecks = [
    (check (lock.version == 7) "flake.lock must be lock format version 7")
    (check (lock.nodes.root.inputs.nixpkgs == "nixpkgs") "flake.lock root must have input nixpkgs")
    (check (pin.locked.type == "github" && pin.locked.owner == "NixOS" && pin.locked.repo == "nixpkgs") "nixpkgs must be locked to github:NixOS/nixpkgs")
    (check (builtins.match "[0-9a-f]{40}" pin.locked.rev != null) "nixpkgs rev must be a 40-hex commit")
    (check (builtins.match "sha256-[A-Za-z0-9+/]{43}=" pin.locked.narHash != null) "nixpkgs narHash must be an SRI sha256")
    (check (builtins.isInt pin.locked.lastModified) "nixpkgs lastModified must be an integer")
    (check (flake.inputs.nixpkgs.url == "github:NixOS/nixpkgs/${pin.original.ref}") "flake.nix's nixpkgs url must name the branch flake.lock was locked from (${pin.original.ref})")
    (check (builtins.isFunction flake.outputs) "flake.nix must have an outputs function")
  ];

  # The name extraction of modules/pkgs/python-app.nix, on every dependency.
  requirementName =
    requirement:
    let
      m = builtins.match "[[:space:]]*([A-Za-z0-9._-]+).*" requirement;
    in
    if m == null then throw "flashpods nix check: cannot read a package name from \"${requirement}\"" else builtins.head m;

  pyprojectChecks = map (
    dir:
    let
      project = (builtins.fromTOML (builtins.readFile (root + "/${dir}/pyproject.toml"))).project;
      names = map requirementName (project.dependencies or [ ]);
    in
    check (project ? name && project ? version && builtins.all (n: n != "") names) "${dir}/pyproject.toml needs project.name, project.version and readable dependencies"
  ) [
    "services/api"
    "services/token"
    "services/devhost"
    "mcp"
  ];
in
all (lockChecks ++ pyprojectChecks)
