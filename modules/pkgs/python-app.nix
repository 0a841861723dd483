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

  # The upper bounds of a requirement ("<2", "<=1.9"):
  # "mcp>=1.27,<2" -> [ { op = "<"; version = "2"; } ].
  upperBounds =
    requirement:
    let
      clauses = lib.splitString "," (builtins.head (lib.splitString ";" requirement));
      upperBound = "[^<>=!~]*(<=|<)[[:space:]]*([0-9][0-9a-zA-Z.]*)[[:space:]]*";
      parse = clause: builtins.match upperBound clause;
      parsed = lib.filter (m: m != null) (map parse clauses);
    in
    map (m: {
      op = builtins.elemAt m 0;
      version = builtins.elemAt m 1;
    }) parsed;

  # Lower bounds are relaxed below (the pinned nixpkgs decides), but an upper
  # bound marks an API break (mcp 2 removed mcp.server.fastmcp): a nixpkgs
  # whose package is past it fails here, naming both, instead of building a
  # package that fails on import.
  checkUpperBounds =
    requirement: package:
    let
      violated = lib.filter (
        bound:
        if bound.op == "<" then
          !(lib.versionOlder package.version bound.version)
        else
          lib.versionOlder bound.version package.version
      ) (upperBounds requirement);
    in
    if violated == [ ] then
      package
    else
      throw "flashpods: ${project.name} needs ${requirementName requirement} ${lib.concatMapStringsSep "," (b: b.op + b.version) violated} (pyproject.toml: \"${requirement}\"), but this nixpkgs has ${requirementName requirement} ${package.version}; update the code and pyproject.toml for the new version, or pin an older nixpkgs";

  dependency =
    requirement:
    let
      attr = nixpkgsName (requirementName requirement);
    in
    checkUpperBounds requirement (
      python3Packages.${attr}
        or (throw "flashpods: ${project.name} needs Python package '${attr}' (from pyproject.toml: \"${requirement}\"), which python3Packages of this nixpkgs does not have")
    );

in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  src = lib.cleanSource src;

  # PEP 517 build with the backend pyproject.toml names (setuptools).
  pyproject = true;
  build-system = [ python3Packages.setuptools ];

  dependencies = map dependency (project.dependencies or [ ]);

  # pyproject.toml's lower bounds are for the dev-host venv; the pinned
  # nixpkgs decides the versions here, so the ranges are relaxed for the
  # build's runtime-deps check. Upper bounds are not lost with them:
  # checkUpperBounds above refuses a nixpkgs past one, at evaluation.
  pythonRelaxDeps = map requirementName (project.dependencies or [ ]);

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
