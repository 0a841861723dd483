# Evaluates modules/flashpods with nixpkgs' lib and the typed stubs next to
# this file, and returns plain data (JSON) that test_nix_module.py checks: the
# generated service configurations, the rendered templates, the units, and
# the messages of failing assertions for broken configurations.
#   nix-instantiate --eval --strict --json tests/unit/nix/eval-module.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib/lib
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  stubs = import ./stubs.nix { inherit lib; };

  fakePackages = {
    api = stubs.fakeDrv "flashpods-api" { meta.mainProgram = "flashpods-api"; };
    token = stubs.fakeDrv "flashpods-token" { meta.mainProgram = "flashpods-token"; };
    init = stubs.fakeDrv "flashpods-init" { meta.mainProgram = "flashpods-init"; };
  };

  # Stand-ins for the derivations the stubs cannot build: the packages
  # (modules/pkgs needs a real nixpkgs) and the images loaded at boot.
  buildScaffold = {
    services.flashpods = {
      package = fakePackages;
      api.images.load = [ ];
    };
  };

  # A complete, valid host configuration.
  valid = {
    imports = [ buildScaffold ];
    services.openssh.enable = true;
    networking.nameservers = [
      "203.0.113.53"
      "2001:db8::53"
    ];
    services.flashpods = {
      enable = true;
      wireguard = {
        laptopPublicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        privateKeyFile = "/var/lib/flashpods-secrets/wg-host.key";
      };
      api.tokenFile = "/var/lib/flashpods-secrets/api-token";
      token = {
        policy = {
          worker = [ "GITHUB_TOKEN" ];
          subAgent = [
            "ANTHROPIC_API_KEY"
            "GITHUB_TOKEN"
          ];
        };
        secrets = {
          ANTHROPIC_API_KEY = "/var/lib/flashpods-secrets/anthropic";
          GITHUB_TOKEN = "/var/lib/flashpods-secrets/github";
          NPM_TOKEN = "/var/lib/flashpods-secrets/npm";
        };
        # No HTTP header to inject it into: the weaker way, on purpose.
        envDelivery = [ "NPM_TOKEN" ];
      };
      proxy = {
        rules = {
          ANTHROPIC_API_KEY = [ "api.anthropic.com" ];
          GITHUB_TOKEN = [
            "github.com"
            "api.github.com"
          ];
        };
        budgetTokens = 1000000;
      };
    };
  };

  # The proxy off: every secret goes the old way, named explicitly.
  proxyOff = {
    services.flashpods = {
      proxy = {
        enable = false;
        rules = lib.mkForce { };
      };
      token.envDelivery = lib.mkForce [
        "ANTHROPIC_API_KEY"
        "GITHUB_TOKEN"
        "NPM_TOKEN"
      ];
    };
  };

  evaluate =
    modules:
    (lib.evalModules {
      modules = [
        stubs.module
        ../../../modules/flashpods
      ]
      ++ modules;
      specialArgs = { inherit (stubs) modulesPath; };
    }).config;

  # The JSON configuration a unit is given (the stubs' `generate` puts it where
  # the store path would be).
  configJSON =
    config: unit: variable:
    builtins.fromJSON config.systemd.services.${unit}.environment.${variable};

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # Forces every value of the configuration through its option's type, and
  # every definition through the check that its option exists.
  everythingChecked = config: builtins.deepSeq (removeAttrs config [ "_module" ]) true;

  # True when evaluating `select config` fails (a type check or a `throw`).
  evaluationFails =
    modules: select:
    !(builtins.tryEval (builtins.deepSeq (select (evaluate modules)) true)).success;

  withFlashpods = settings: [
    valid
    { services.flashpods = settings; }
  ];

  good = evaluate [ valid ];
  units = good.systemd.services;
  pick = names: attrs: lib.filterAttrs (name: _: lib.elem name names) attrs;
  unitFacts = lib.mapAttrs (_: unit: {
    inherit (unit)
      after
      requires
      wants
      wantedBy
      environment
      ;
    serviceConfig = pick [
      "User"
      "Group"
      "ExecStart"
      "LoadCredential"
      "ProtectSystem"
      "PrivateTmp"
      "NoNewPrivileges"
      "RestrictAddressFamilies"
      "CapabilityBoundingSet"
      "AmbientCapabilities"
      "IPAddressDeny"
      "IPAddressAllow"
      "ReadWritePaths"
      "RuntimeDirectory"
      "RuntimeDirectoryMode"
      "StateDirectory"
      "UMask"
      "DynamicUser"
      "SystemCallFilter"
      "ProtectProc"
      "LimitNOFILE"
      "Restart"
      "LoadCredentialEncrypted"
      "PrivateNetwork"
      "Type"
      "RemainAfterExit"
      "ProtectHome"
      "ProtectKernelTunables"
      "RestrictNamespaces"
      "RestrictSUIDSGID"
      "MemoryDenyWriteExecute"
    ] unit.serviceConfig;
    inherit (unit) restartTriggers;
  }) units;

  # SPIRE on, with a given package version. The version check is an
  # assertion, so the configuration is generated for an old one too.
  withSpire =
    version:
    evaluate (
      withFlashpods {
        spire = {
          enable = true;
          package = stubs.spireOf version;
        };
      }
    );
  spireFacts =
    version:
    let
      c = withSpire version;
      isSpireUnit = name: _: lib.hasPrefix "flashpods-spire" name;
      spireUnits = lib.filterAttrs isSpireUnit c.systemd.services;
      # ExecStart is `<spire-agent> run -config <file> -expandEnv`, or a
      # wrapper script that ends in that line; the stubbed `generate` puts the
      # JSON itself where the store path would be.
      configText = exec: builtins.head (builtins.match ".* run -config (.*) -expandEnv.*" exec);
      configOf = exec: builtins.fromJSON (configText exec);
    in
    {
      failedAssertions = failedAssertions c;
      everythingChecked = everythingChecked c;
      agentExec = spireUnits.flashpods-spire-agent.serviceConfig.ExecStart;
      agentConfig = configOf spireUnits.flashpods-spire-agent.serviceConfig.ExecStart;
      serverConfig = configOf spireUnits.flashpods-spire-server.serviceConfig.ExecStart;
      # The files as SPIRE reads them (key order matters to its unknown-key check).
      agentConfigText = configText spireUnits.flashpods-spire-agent.serviceConfig.ExecStart;
      serverConfigText = configText spireUnits.flashpods-spire-server.serviceConfig.ExecStart;
      apiConfig = configJSON c "flashpods-api" "FLASHPODS_API_CONFIG";
      tokenConfig = configJSON c "flashpods-token" "FLASHPODS_TOKEN_CONFIG";
      # The proxy is on with SPIRE too: it attests by the job's JWT-SVID.
      proxyConfig = configJSON c "flashpods-proxy" "FLASHPODS_TOKEN_CONFIG";
      proxyUnit = {
        inherit (c.systemd.services.flashpods-proxy) after wants;
      };
      bundleBefore = c.systemd.services.flashpods-spire-bundle.before;
      units = lib.mapAttrs (_: unit: {
        inherit (unit) after requires wantedBy;
        inherit (unit) serviceConfig;
      }) spireUnits;
      apiUnitAfter = c.systemd.services.flashpods-api.after;
      tokenServiceConfig = c.systemd.services.flashpods-token.serviceConfig;
      tmpfilesFiles = builtins.attrNames c.systemd.tmpfiles.settings;
      # The plugin package as the module's default builds it
      # (modules/pkgs/spire-attestor.nix through the stubs' buildGoModule).
      attestor =
        let
          pkg = c.services.flashpods.package.spireAttestor;
        in
        {
          inherit (pkg) pname version goModuleArgs;
          storePath = toString pkg;
          inherit (pkg.meta) mainProgram;
        };
      users = lib.mapAttrs (_: u: { inherit (u) extraGroups group isSystemUser; }) c.users.users;
    };

  # modules/hosts/example.nix as it is, on the typed stubs.
  example = evaluate [
    ../../../modules/hosts/example.nix
    buildScaffold
  ];
in
{
  valid = {
    failedAssertions = failedAssertions good;
    everythingChecked = everythingChecked good;
    apiConfig = builtins.fromJSON units.flashpods-api.environment.FLASHPODS_API_CONFIG;
    reaperConfig = builtins.fromJSON units.flashpods-reaper.environment.FLASHPODS_API_CONFIG;
    tokenConfig = builtins.fromJSON units.flashpods-token.environment.FLASHPODS_TOKEN_CONFIG;
    proxyConfig = builtins.fromJSON units.flashpods-proxy.environment.FLASHPODS_TOKEN_CONFIG;
    units = unitFacts;
    firewall = good.environment.etc."flashpods/firewall.nft".text;
    firewallTableBody = good.networking.nftables.tables.flashpods.content;
    firewallTableFamily = good.networking.nftables.tables.flashpods.family;
    flushRuleset = good.networking.nftables.flushRuleset;
    rsyncdConfig = lib.last (lib.splitString "--config=" units.flashpods-rsyncd.serviceConfig.ExecStart);
    rsyncdUnitConfig = units.flashpods-rsyncd.unitConfig;
    tmpfiles = good.systemd.tmpfiles.settings."10-flashpods";
    tmpfilesFiles = builtins.attrNames good.systemd.tmpfiles.settings;
    openFirewallUdp = good.networking.firewall.allowedUDPPorts;
    wgTcpPorts = good.networking.firewall.interfaces.wg0.allowedTCPPorts;
    sshOpenPublicly = good.services.openssh.openFirewall;
    wireguard = good.networking.wireguard.interfaces.wg0;
    users = lib.mapAttrs (
      _: u:
      pick [
        "uid"
        "isNormalUser"
        "isSystemUser"
        "linger"
        "autoSubUidGidRange"
        "subUidRanges"
        "subGidRanges"
        "extraGroups"
        "group"
      ] u
    ) good.users.users;
  };

  # The example host of the flake (nixosConfigurations.example).
  example = {
    failedAssertions = failedAssertions example;
    inherit (example) warnings;
    everythingChecked = everythingChecked example;
    apiConfig = configJSON example "flashpods-api" "FLASHPODS_API_CONFIG";
  };

  spire = {
    "1.13.2" = spireFacts "1.13.2";
    "1.13.3" = spireFacts "1.13.3";
    "1.15.0" = spireFacts "1.15.0";
  };

  # WireGuard through systemd-networkd: no wireguard-<if>.service exists.
  networkd = lib.mapAttrs (_: unit: { inherit (unit) after requires wants; }) (evaluate [
    valid
    { networking.wireguard.useNetworkd = true; }
  ]).systemd.services;

  overrides = {
    # api.settings overrides a generated key; retention durations convert.
    tokenConfig = builtins.fromJSON (evaluate (withFlashpods { api.settings.instance = "blue"; }))
      .systemd.services.flashpods-token.environment.FLASHPODS_TOKEN_CONFIG;
    apiConfig = builtins.fromJSON (evaluate (withFlashpods {
      api.settings.limits.log_bytes = 1024;
      retention.artifacts = "90s";
      api.defaultTimeout = "2d";
    })).systemd.services.flashpods-api.environment.FLASHPODS_API_CONFIG;
    sshOpenPublicly = (evaluate (withFlashpods { ssh.openPublicly = true; })).services.openssh.openFirewall;
    # A warm pool and a control dir elsewhere reach the API config and tmpfiles.
    warm =
      let
        c = evaluate (withFlashpods {
          api.warmPool = {
            worker = 2;
            sub_agent = 1;
          };
          storage.control = "/srv/flashpods/control";
        });
      in
      {
        apiConfig = builtins.fromJSON c.systemd.services.flashpods-api.environment.FLASHPODS_API_CONFIG;
        tmpfiles = c.systemd.tmpfiles.settings."10-flashpods";
        failedAssertions = failedAssertions c;
      };
  };

  proxy =
    let
      facts = c: {
        failedAssertions = failedAssertions c;
        everythingChecked = everythingChecked c;
        units = lib.mapAttrs (_: unit: {
          inherit (unit) after requires wants;
          serviceConfig = pick [
            "LoadCredential"
            "LoadCredentialEncrypted"
            "ExecStart"
          ] unit.serviceConfig;
        }) (lib.filterAttrs (name: _: lib.hasPrefix "flashpods-proxy" name) c.systemd.services);
        tokenConfig = configJSON c "flashpods-token" "FLASHPODS_TOKEN_CONFIG";
        proxyConfig =
          if c.services.flashpods.proxy.enable then
            configJSON c "flashpods-proxy" "FLASHPODS_TOKEN_CONFIG"
          else
            null;
        apiConfig = configJSON c "flashpods-api" "FLASHPODS_API_CONFIG";
        tmpfiles = builtins.attrNames c.systemd.tmpfiles.settings."10-flashpods";
      };
    in
    {
      # GitHub scoping: pushes only to the job's branches.
      githubScope = facts (evaluate (withFlashpods {
        proxy.githubScope.pushBranches = [ "flashpods/{job_id}/*" ];
      }));
      # An operator's own key, encrypted with systemd-creds.
      encryptedKey = facts (evaluate (withFlashpods {
        proxy.ca = {
          generate = false;
          encrypted = true;
          keyFile = "/var/lib/flashpods-secrets/proxy-ca-key.cred";
          certFile = "/var/lib/flashpods-secrets/proxy-ca.pem";
        };
      }));
      disabled = facts (evaluate [
        valid
        proxyOff
      ]);
    };

  broken = {
    # A secret with neither a host rule nor an opt-in to env delivery.
    secretWithoutRule = failedAssertions (evaluate (withFlashpods {
      token.secrets.SLACK_TOKEN = "/var/lib/flashpods-secrets/slack";
    }));
    ruleWithoutSecret = failedAssertions (evaluate (withFlashpods {
      proxy.rules.SLACK_TOKEN = [ "slack.com" ];
    }));
    ruleAndEnvDelivery = failedAssertions (evaluate (withFlashpods {
      token.envDelivery = [ "GITHUB_TOKEN" ];
    }));
    rulesWithProxyOff = failedAssertions (evaluate (withFlashpods {
      proxy.enable = false;
    }));
    encryptedGeneratedKey = failedAssertions (evaluate (withFlashpods {
      proxy.ca.encrypted = true;
    }));
    caKeyInStore = failedAssertions (evaluate (withFlashpods {
      proxy.ca = {
        generate = false;
        keyFile = "/nix/store/00000000000000000000000000000000-ca-key.pem";
      };
    }));
    caDirAboveStorage = failedAssertions (evaluate (withFlashpods {
      proxy.ca.keyFile = "/var/lib/flashpods/ca-key.pem";
    }));
    emptyRuleFails = evaluationFails (withFlashpods { proxy.rules.GITHUB_TOKEN = lib.mkForce [ ]; }) (
      c: c.services.flashpods.proxy.rules
    );
    # Nothing set but enable: every required setting is named.
    missingEverything = failedAssertions (evaluate [
      buildScaffold
      { services.flashpods.enable = true; }
    ]);
    policyWithoutSecret = failedAssertions (evaluate (withFlashpods {
      token.policy.worker = [ "DOCKER_TOKEN" ];
    }));
    secretInStore = failedAssertions (evaluate (withFlashpods {
      api.tokenFile = lib.mkForce "/nix/store/00000000000000000000000000000000-token";
    }));
    badSecretName = failedAssertions (evaluate (withFlashpods {
      token.secrets."not a name" = "/var/lib/x";
    }));
    addressWithoutPrefix = failedAssertions (evaluate (withFlashpods {
      wireguard.hostAddress = "10.0.0.1";
    }));
    # The attestor plugin refuses an instance label it could never match.
    spireBadInstance = failedAssertions (evaluate (withFlashpods {
      spire.enable = true;
      api.settings.instance = "not a label";
    }));
    samePorts = failedAssertions (evaluate (withFlashpods {
      rsync.port = 8080;
    }));
    controlInWorkspaces = failedAssertions (evaluate (withFlashpods {
      storage.control = "/var/lib/flashpods/workspaces/.control";
    }));
    badWarmKind = failedAssertions (evaluate (withFlashpods {
      api.warmPool.agent = 1;
    }));
    # The sub-agent role is spelled subAgent (sub_agent in the JSON).
    oldPolicyName = failedAssertions (evaluate (withFlashpods {
      token.policy.agent = [ "GITHUB_TOKEN" ];
    }));
    # Jobs mount the token socket's directory: never the one of the Podman socket.
    tokenSocketBesidePodman = failedAssertions (evaluate (withFlashpods {
      token.socket = "/run/flashpods/token.sock";
    }));
    # The job user's subordinate range may hold no account's uid and no other
    # user's range: the firewall treats every uid in it as a job.
    subIdsHoldAUid = failedAssertions (evaluate (withFlashpods {
      podman.subIdStart = 990;
      podman.subIdCount = 100;
    }));
    subIdsOverlapAnotherUser = failedAssertions (evaluate [
      valid
      {
        users.users.alice = {
          isNormalUser = true;
          subUidRanges = [
            {
              startUid = 1879048192 + 10;
              count = 65536;
            }
          ];
        };
      }
    ]);
    badDurationFails = evaluationFails (withFlashpods { retention.logs = "one day"; }) (
      c: c.systemd.services.flashpods-api.environment.FLASHPODS_API_CONFIG
    );
  };

  warnings = {
    valid = good.warnings;
    noResolvers =
      (evaluate [
        valid
        { networking.nameservers = lib.mkForce [ ]; }
      ]).warnings;
  };

  disabled = {
    units = builtins.attrNames (evaluate [ { services.flashpods.enable = false; } ]).systemd.services;
  };
}
