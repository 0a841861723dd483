# One Flashpods Python package (services/api, services/token or mcp) built
# from its own pyproject.toml. The runtime dependencies are read from that
# file, so the Nix build and the dev-host venv (requirements.lock) name the
# same packages; a dependency nixpkgs lacks fails evaluation with its name.
{
  lib,
  python3Packages,
  src,
  importName,
}:
let
  pyproject = builtins.fromTOML (builtins.readFile (src + "/pyproject.toml"));
  project = pyproject.project;

  # "mcp>=1.27,<2" -> "mcp"; "Foo_Bar[extra] ; python_version<'4'" -> "foo-bar"
  requirementName =
    requirement:
    let
      name = builtins.head (builtins.match "[[:space:]]*([A-Za-z0-9._-]+).*" requirement);
    in
    lib.toLower (builtins.replaceStrings [ "_" "." ] [ "-" "-" ] name);

  nixpkgsName = name: {
    # PyPI names whose nixpkgs attribute differs.
  }.${name} or name;

  dependency =
    requirement:
    let
      attr = nixpkgsName (requirementName requirement);
    in
    python3Packages.${attr}
      or (throw "flashpods: ${project.name} needs Python package '${attr}' (from pyproject.toml: \"${requirement}\"), which python3Packages of this nixpkgs does not have");
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  src = lib.cleanSource src;

  # PEP 517 build with the backend pyproject.toml names (setuptools).
  pyproject = true;
  build-system = [ python3Packages.setuptools ];

  dependencies = map dependency (project.dependencies or [ ]);

  # pyproject.toml pins ranges for the dev-host venv; the pinned nixpkgs decides
  # the exact versions here. Keep the names, relax the ranges.
  pythonRelaxDeps = true;

  # The unit tests run in their own check (flake checks.unit-tests) against
  # all three packages at once; here only prove the package imports.
  doCheck = false;
  pythonImportsCheck = [ importName ];

  meta = {
    description = project.description or project.name;
    # The script named like the package (flashpods-mcp, not the `flashpods` CLI).
    mainProgram =
      let
        scripts = builtins.attrNames (project.scripts or { });
      in
      if lib.elem project.name scripts || scripts == [ ] then project.name else builtins.head scripts;
    license = lib.licenses.mit;
  };
}
