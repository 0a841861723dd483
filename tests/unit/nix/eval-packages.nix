# Evaluates modules/pkgs/python-app.nix for each Python package of the repo with
# a python3Packages that has exactly the attribute names nixpkgs uses for our
# dependencies, and returns what buildPythonApplication would be given. A
# dependency whose PyPI name maps to no nixpkgs attribute fails here, by name.
#   nix-instantiate --eval --strict --json tests/unit/nix/eval-packages.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  # python3Packages attribute names in nixpkgs (pkgs/top-level/python-packages.nix).
  known = [
    "anyio"
    "cryptography"
    "dataset"
    "flask"
    "grpcio"
    "gunicorn"
    "mcp"
    "pydantic"
    "pyjwt"
    "requests"
    "rich"
    "setuptools"
    "sh"
  ];
  python3Packages = lib.genAttrs known (name: "python3Packages.${name}") // {
    buildPythonApplication = args: {
      inherit (args)
        pname
        version
        pyproject
        build-system
        dependencies
        pythonRelaxDeps
        pythonImportsCheck
        ;
      mainProgram = args.meta.mainProgram;
    };
  };
  app =
    src: importName:
    import ../../../modules/pkgs/python-app.nix {
      inherit lib python3Packages src importName;
    };
in
{
  flashpods-api = app ../../../services/api "flashpods_api";
  flashpods-token = app ../../../services/token "flashpods_token";
  flashpods-mcp = app ../../../mcp "flashpods_mcp";
  flashpods-devhost = app ../../../services/devhost "flashpods_devhost";
}
