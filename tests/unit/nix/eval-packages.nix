# Evaluates modules/pkgs/python-app.nix for each Python package of the repo with
# a python3Packages that has exactly the attribute names nixpkgs uses for our
# dependencies, and returns what buildPythonApplication would be given. A
# dependency whose PyPI name maps to no nixpkgs attribute fails here, by name.
# `mcpVersion` is the version of nixpkgs' mcp: 2.x must fail evaluation of
# flashpods-mcp (its pyproject says "<2"), not build and fail on import.
#   nix-instantiate --eval --strict --json tests/unit/nix/eval-packages.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib [--argstr mcpVersion 2.0.0]
{
  nixpkgsLib,
  mcpVersion ? "1.27.1",
}:
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
  python3Packages = lib.genAttrs known (name: {
    name = "python3Packages.${name}";
    version = if name == "mcp" then mcpVersion else "99.0";
  }) // {
    buildPythonApplication = args: {
      inherit (args)
        pname
        version
        pyproject
        pythonRelaxDeps
        pythonImportsCheck
        ;
      mainProgram = args.meta.mainProgram;
      build-system = map (p: p.name) args.build-system;
      dependencies = map (p: p.name) args.dependencies;
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
