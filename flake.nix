{
  description = "Flashpods: run an AI agent's jobs as rootless Podman containers on your own host, over WireGuard";

  # A stable NixOS release branch; flake.lock pins the exact revision.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      flashpodsPackages = pkgs: import ./modules/pkgs { inherit pkgs lib; };

      # Every Python package of the repo plus what runs them, for the dev
      # host app, the dev shell and the unit-test check.
      pythonEnv =
        pkgs: extra:
        let
          own = flashpodsPackages pkgs;
        in
        pkgs.python3.withPackages (
          ps:
          map ps.toPythonModule [
            own.flashpods-api
            own.flashpods-token
            own.flashpods-mcp
            own.flashpods-devhost
          ]
          ++ [ ps.gunicorn ]
          ++ extra ps
        );

      # The .nix files as a store path. Interpolating it gives the build the
      # files themselves (the string carries their context); a list of
      # toString'd paths would name files outside the sandbox.
      nixSources = lib.cleanSourceWith {
        name = "flashpods-nix-sources";
        src = lib.cleanSource ./.;
        filter = path: type: type == "directory" || lib.hasSuffix ".nix" path;
      };
    in
    {
      nixosModules.flashpods = ./modules/flashpods;
      nixosModules.default = self.nixosModules.flashpods;

      packages = forAllSystems (
        pkgs:
        let
          own = flashpodsPackages pkgs;
        in
        {
          inherit (own)
            flashpods-api
            flashpods-token
            flashpods-mcp
            flashpods-init
            flashpods-spire-attestor
            worker-image
            agent-image
            ;
          # The laptop installs this one: `nix profile install .#flashpods-mcp`.
          default = own.flashpods-mcp;
        }
      );

      # A complete host for a rented x86_64 box; modules/hosts/example.nix
      # says what to replace (disks, keys, addresses).
      nixosConfigurations.example = lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          self.nixosModules.default
          ./modules/hosts/example.nix
        ];
      };

      checks = forAllSystems (
        pkgs:
        let
          own = flashpodsPackages pkgs;
        in
        import ./tests/nixos { inherit pkgs self; }
        // {
          # tests/unit against the Nix-built packages, in the build sandbox:
          # no root, no Podman, no network namespaces, so tests marked `root`
          # or `slow` (pytest.ini) stay with scripts/test on a real host.
          # tests/unit/nix checks the Nix files themselves with nix-instantiate,
          # which does not run inside a build; `nix flake check` evaluates them.
          unit-tests =
            pkgs.runCommand "flashpods-unit-tests"
              {
                nativeBuildInputs = [
                  (pythonEnv pkgs (ps: [
                    ps.pytest
                    ps.pytest-timeout
                  ]))
                ];
              }
              ''
                cp -r ${lib.cleanSource ./.} src
                chmod -R u+w src
                cd src
                export HOME=$TMPDIR
                python -m pytest -p no:cacheprovider -m "not root and not slow" \
                  --ignore=tests/unit/nix tests/unit
                touch $out
              '';

          # Unverified: no nixfmt runs where this flake was written (README).
          formatting = pkgs.runCommand "flashpods-nixfmt" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
            find ${nixSources} -name '*.nix' -type f -print0 | xargs -0 nixfmt --check
            touch $out
          '';

          inherit (own) flashpods-init flashpods-spire-attestor worker-image;
        }
        # Every example configuration is also a check (it must build); the
        # example is an x86_64 host.
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          example-host = self.nixosConfigurations.example.config.system.build.toplevel;
        }
      );

      apps = forAllSystems (pkgs: {
        dev-host = {
          type = "app";
          program = lib.getExe (
            pkgs.writeShellApplication {
              name = "flashpods-dev-host";
              runtimeInputs = [
                pkgs.python3
                pkgs.podman
                pkgs.rsync
                pkgs.nftables
                pkgs.wireguard-tools
              ];
              # The launcher finds the services in FLASHPODS_VENV/bin and the
              # shared templates in FLASHPODS_TEMPLATE_DIR (services/devhost).
              text = ''
                export FLASHPODS_VENV=${pythonEnv pkgs (_: [ ])}
                export FLASHPODS_TEMPLATE_DIR=${./modules/flashpods}
                exec "$FLASHPODS_VENV/bin/flashpods-devhost" "$@"
              '';
            }
          );
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps: with ps; [
                flask
                gunicorn
                dataset
                pyjwt
                cryptography
                sh
                mcp
                requests
                rich
                pytest
                pytest-timeout
              ]
            ))
            pkgs.ruff
            pkgs.nixfmt
            pkgs.podman
            pkgs.rsync
            pkgs.nftables
            pkgs.wireguard-tools
            pkgs.gcc
            pkgs.jq
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
