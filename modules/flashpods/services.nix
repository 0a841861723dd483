# The Flashpods services: the API (gunicorn) and the reaper as flashpods-api,
# the token service as flashpods-token. Never as `flashpods`: a process that
# escapes a container lands there and must find nothing to use (design.md,
# "Host users and groups"). Each reads one JSON file (FLASHPODS_API_CONFIG /
# FLASHPODS_TOKEN_CONFIG) with the keys of design.md; secrets only by path,
# through systemd credentials.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.flashpods;
  fpLib = import ./lib.nix { inherit lib; };
  jsonFormat = pkgs.formats.json { };
  seconds = fpLib.durationToSeconds;
  hostIp = fpLib.addressWithoutPrefix cfg.wireguard.hostAddress;
  credential = unit: name: "/run/credentials/${unit}.service/${name}";
  podmanPackage = config.virtualisation.podman.package;

  # One file per unit: each points at its own credentials directory.
  apiConfigFor =
    unit:
    jsonFormat.generate "flashpods-${unit}.json" (
      cfg.api.settings // { token_file = credential unit "api-token"; }
    );

  # One file per unit, like the API's: each reads secrets from its own
  # credentials directory, and loads only the ones it uses (the token service
  # the env-delivered ones, the proxy the ruled ones and the CA).
  tokenConfigFor =
    unit:
    jsonFormat.generate "${unit}.json" (
      cfg.token.settings
      // {
        secrets =
          cfg.token.settings.secrets // lib.mapAttrs (name: _: credential unit name) cfg.token.secrets;
      }
    );
  tokenConfig = tokenConfigFor "flashpods-token";
  proxyConfig = tokenConfigFor "flashpods-proxy";
  secretCredentials =
    names:
    map (name: "${name}:${cfg.token.secrets.${name}}") (
      lib.filter (name: cfg.token.secrets ? ${name}) names
    );

  proxyCa = cfg.proxy.ca;
  generateCa = cfg.proxy.enable && proxyCa.generate;
  firewallRuleset = config.environment.etc."flashpods/firewall.nft".text;

  storageDirs =
    with cfg.storage;
    [
      uploads
      workspaces
      artifacts
      logs
      db
      control
    ]
    # The API writes each job's budget file for the proxy.
    ++ lib.optional cfg.proxy.enable budgets;

  apiUnitBase = unit: {
    after = [
      "flashpods-podman.service"
      "flashpods-images.service"
      "systemd-tmpfiles-setup.service"
    ]
    ++ lib.optional cfg.spire.enable "flashpods-spire-server.service";
    wants = [ "flashpods-podman.service" ];
    path = [ podmanPackage ] ++ lib.optional cfg.spire.enable cfg.spire.package;
    environment = {
      FLASHPODS_API_CONFIG = toString (apiConfigFor unit);
      HOME = "/var/lib/flashpods-api";
      XDG_RUNTIME_DIR = "/run/${unit}";
      # ProtectSystem=strict leaves /tmp read-only (no PrivateTmp, see below).
      TMPDIR = "/var/lib/flashpods-api";
    };
    restartTriggers = [ (apiConfigFor unit) ];
    serviceConfig = fpLib.hardening // {
      User = "flashpods-api";
      Group = "flashpods-api";
      LoadCredential = [ "api-token:${cfg.api.tokenFile}" ];
      StateDirectory = "flashpods-api";
      StateDirectoryMode = "0700";
      RuntimeDirectory = unit;
      RuntimeDirectoryMode = "0700";
      ReadWritePaths = storageDirs;
      # No PrivateTmp: the uploads directory lives under /tmp (the seed's
      # path) and is shared with rsyncd.
      PrivateTmp = false;
      Restart = "always";
      RestartSec = 2;
    };
  };
in
{
  config = lib.mkIf cfg.enable {
    users.groups.flashpods-api = { };
    users.users.flashpods-api = {
      isSystemUser = true;
      group = "flashpods-api";
      extraGroups = [ "flashpods" ];
      description = "Flashpods API and reaper";
    };
    users.groups.flashpods-token = { };
    users.users.flashpods-token = {
      isSystemUser = true;
      group = "flashpods-token";
      extraGroups = [ "flashpods" ];
      description = "Flashpods token exchange service";
    };

    # The API configuration (design.md, FLASHPODS_API_CONFIG): the packaged
    # defaults (fpLib.apiDefaults, the file the API itself loads) with what a
    # NixOS host must change (paths, pasta, the tunnel) and what the options
    # above set; the options' defaults come from the same file.
    # tests/unit/nix/test_nix_module.py lists the keys this may change. mkDefault
    # so services.flashpods.api.settings can override any key.
    services.flashpods.api.settings = lib.mapAttrsRecursive (_: lib.mkDefault) (
      lib.recursiveUpdate fpLib.apiDefaults {
        instance = config.networking.hostName;
        db_path = "${cfg.storage.db}/flashpods.db";
        storage = {
          inherit (cfg.storage)
            uploads
            workspaces
            artifacts
            logs
            control
            ;
          # The proxy's per-job model usage, shown with each job (and read by
          # the reaper, which stops a job at its budget).
          usage = if cfg.proxy.enable then toString cfg.storage.usage else null;
          # Per-job budgets, written by the API for the proxy (docs/design.md,
          # "Per-job budget").
          budgets = if cfg.proxy.enable then toString cfg.storage.budgets else null;
        };
        # The host's budget, which a job may only lower in POST /jobs.
        limits.job_budget_tokens = if cfg.proxy.enable then cfg.proxy.budgetTokens else null;
        warm_pool = cfg.api.warmPool;
        podman_url = "unix://${cfg.podman.socket}";
        rsync_url = "rsync://${hostIp}:${toString cfg.rsync.port}/uploads";
        # Second layer behind the firewall: only the laptop's address.
        allowed_peers = [ cfg.wireguard.laptopAddress ];
        max_concurrent_jobs = cfg.api.maxConcurrentJobs;
        queue_limit = cfg.api.queueLimit;
        default_timeout_s = seconds cfg.api.defaultTimeout;
        max_timeout_s = seconds cfg.api.maxTimeout;
        images = {
          inherit (cfg.api.images) worker allowed;
          sub_agent = cfg.api.images.subAgent;
        };
        # NixOS's Podman 5 defaults to pasta; the firewall's owner match covers
        # it like slirp4netns (tests/nixos run the invariants with it).
        network_mode = "pasta";
        helper_path = lib.getExe cfg.package.init;
        token_socket = cfg.token.socket;
        attestation = if cfg.spire.enable then "spire" else "peer";
        # Read by the API only in spire mode: the module's own SPIRE units
        # (spire.nix) and their sockets.
        spire = {
          server_cli =
            if cfg.spire.enable then
              lib.getExe' cfg.spire.package.server "spire-server"
            else
              fpLib.apiDefaults.spire.server_cli;
          server_socket = fpLib.spire.serverSocket;
          trust_domain = cfg.spire.trustDomain;
          parent_id = fpLib.hostAgentId cfg.spire.trustDomain;
          jwt_svid_ttl_s = seconds cfg.spire.jwtSvidTtl;
          agent_socket = fpLib.spire.agentSocket;
        };
        retention = {
          artifacts_s = seconds cfg.retention.artifacts;
          logs_s = seconds cfg.retention.logs;
          uploads_s = seconds cfg.retention.uploads;
        };
      }
    );

    # The token service configuration (design.md, FLASHPODS_TOKEN_CONFIG).
    services.flashpods.token.settings = lib.mapAttrsRecursive (_: lib.mkDefault) (
      {
        inherit (cfg.token) socket;
        socket_group = "flashpods";
        mode = if cfg.spire.enable then "spire" else "peer";
        trust_domain = cfg.spire.trustDomain;
        podman_url = "unix://${cfg.podman.socket}";
        # Must match the API's: the service finds a job's container by this label.
        inherit (cfg.api.settings) instance;
        roles = {
          inherit (cfg.token.policy) worker;
          sub_agent = cfg.token.policy.subAgent;
        };
        secrets = lib.mapAttrs (name: _: credential "flashpods-token" name) cfg.token.secrets;
        # Opted in explicitly, the weaker way (docs/token.md); every other secret
        # has a rule (default.nix asserts it, as the service does at load).
        env_delivery = cfg.token.envDelivery;
        audit_log = "/var/log/flashpods-token/audit.log";
        spire = {
          bundle_file = null;
          agent_socket = null;
          audience = "flashpods-token";
        };
      }
      // lib.optionalAttrs cfg.proxy.enable {
        # The credential proxy's block (docs/design.md "Credential proxy"), read
        # by flashpods-proxy only.
        proxy = {
          # Beside token.sock: jobs already mount that directory.
          socket = "${builtins.dirOf cfg.token.socket}/proxy.sock";
          # The host's CA, from the proxy unit's systemd credentials.
          ca_key_file = credential "flashpods-proxy" "ca-key.pem";
          ca_cert_file = credential "flashpods-proxy" "ca.pem";
          # The ruleset this host loads: its job_nonpublic sets are what the
          # proxy refuses to dial (firewall.nix renders it).
          firewall_template = "/etc/flashpods/firewall.nft";
          inherit (cfg.proxy) rules;
          upstream_ca_file =
            if cfg.proxy.upstreamCaFile == null then null else toString cfg.proxy.upstreamCaFile;
          usage_dir = toString cfg.storage.usage;
          budget_dir = toString cfg.storage.budgets;
          budget_tokens = cfg.proxy.budgetTokens;
          # Addresses routed into the tunnel are the laptop's: refused, as the
          # firewall's `oifname wg` rule refuses them to jobs (V18).
          refused_interfaces = [ cfg.wireguard.interface ];
          github_scope =
            if cfg.proxy.githubScope == null then
              null
            else
              {
                inherit (cfg.proxy.githubScope) secret;
                push_branches = cfg.proxy.githubScope.pushBranches;
                api_write = cfg.proxy.githubScope.apiWrite;
              };
        };
      }
    );

    systemd.services.flashpods-api = lib.mkMerge [
      (apiUnitBase "flashpods-api")
      {
        description = "Flashpods API (gunicorn)";
        wantedBy = [ "multi-user.target" ];
        # It binds the tunnel address, which exists once the interface is up
        # (fpLib.tunnelUnits: the same with either WireGuard backend); until
        # then gunicorn exits and Restart=always tries again.
        inherit (fpLib.tunnelUnits cfg.wireguard.interface) after wants;
        serviceConfig = {
          # The package's own gunicorn launcher (the one the dev host runs):
          # gthread workers around flashpods_api.app:create_app().
          ExecStart = lib.escapeShellArgs [
            (lib.getExe' cfg.package.api "flashpods-api")
            "--bind"
            "${hostIp}:${toString cfg.api.port}"
            "--workers"
            (toString cfg.api.workers)
          ];
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
          ];
          # Third layer: the API's sockets talk to the laptop (and loopback for
          # local checks) and nothing else.
          IPAddressDeny = "any";
          IPAddressAllow = [
            cfg.wireguard.laptopAddress
            "localhost"
          ];
        };
      }
    ];

    systemd.services.flashpods-reaper = lib.mkMerge [
      (apiUnitBase "flashpods-reaper")
      {
        description = "Flashpods reaper (job timeouts, final logs, retention)";
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          ExecStart = lib.getExe' cfg.package.api "flashpods-reaper";
          # Unix sockets (Podman, SPIRE admin) only; netlink for the Go CLIs'
          # start-up, no IP at all.
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_NETLINK"
          ];
          IPAddressDeny = "any";
          # Where the kernel does not hold a job to its memory and pids limits
          # (rootless on cgroup v1), the reaper polls the job's processes in
          # /proc (docs/security.md, "Per-job limits"): they are the flashpods
          # uid's, which ProtectProc=invisible (the shared hardening) would hide.
          ProtectProc = lib.mkForce "default";
          # Its walks of job trees hold up to ~512 descriptors at once.
          LimitNOFILE = 4096;
        };
      }
    ];

    systemd.services.flashpods-token = {
      description = "Flashpods token exchange service (unix socket only)";
      wantedBy = [ "multi-user.target" ];
      after = [
        "flashpods-podman.service"
        "systemd-tmpfiles-setup.service"
      ]
      ++ lib.optional cfg.spire.enable "flashpods-spire-bundle.service";
      wants = lib.optional cfg.spire.enable "flashpods-spire-bundle.service";
      environment.FLASHPODS_TOKEN_CONFIG = toString tokenConfig;
      restartTriggers = [ tokenConfig ];
      serviceConfig = fpLib.hardening // {
        ExecStart = lib.getExe' cfg.package.token "flashpods-token";
        User = "flashpods-token";
        Group = "flashpods-token";
        # Only the secrets it hands out as values; a ruled secret's value is
        # the proxy's alone (the service hands a placeholder for it).
        LoadCredential = secretCredentials cfg.token.envDelivery;
        # The socket's own directory (storage.nix): containers mount it, so it
        # holds nothing but the socket (default.nix asserts it is not the
        # Podman socket's directory or one of its parents).
        ReadWritePaths = [ (builtins.dirOf cfg.token.socket) ];
        LogsDirectory = "flashpods-token";
        LogsDirectoryMode = "0750";
        PrivateTmp = true;
        # Unix sockets only: the service can never listen on TCP.
        RestrictAddressFamilies = [ "AF_UNIX" ];
        # It hands its socket to group flashpods (chown), which ~@privileged
        # would otherwise forbid.
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "@chown"
        ];
        IPAddressDeny = "any";
        Restart = "always";
        RestartSec = 2;
      }
      // {
        # In both modes the service reads the pid namespace of another uid's
        # process through a pidfd, which needs CAP_SYS_PTRACE: peer attestation
        # identifies the job by it, and the per-job connection cap (decided at
        # accept, before any request is read) counts connections by it. Without
        # it the cap falls back to the caller's /proc/<pid>/cgroup, which
        # ProtectProc=invisible would hide too.
        CapabilityBoundingSet = [ "CAP_SYS_PTRACE" ];
        AmbientCapabilities = [ "CAP_SYS_PTRACE" ];
        ProtectProc = "default";
        SystemCallFilter = [ "@system-service" ];
      };
    };

    # The host's proxy CA, made once (docs/nixos.md "The credential proxy's
    # CA"): root writes it into a root-only directory (storage.nix), and the
    # proxy only ever sees it as its own systemd credentials.
    systemd.services.flashpods-proxy-ca = lib.mkIf generateCa {
      description = "Flashpods credential proxy: make the host's CA if it is missing";
      after = [ "systemd-tmpfiles-setup.service" ];
      serviceConfig = fpLib.hardening // {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = lib.escapeShellArgs [
          (lib.getExe' cfg.package.token "flashpods-proxy")
          "make-ca"
          proxyCa.keyFile
          proxyCa.certFile
        ];
        # Root without capabilities (the shared hardening): the directories are
        # root's own, nothing else is writable.
        ReadWritePaths = lib.unique [
          (builtins.dirOf proxyCa.keyFile)
          (builtins.dirOf proxyCa.certFile)
        ];
        UMask = "0077";
        PrivateTmp = true;
        PrivateNetwork = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        IPAddressDeny = "any";
      };
    };

    # The credential proxy: the token service's second face (same package,
    # user and attestation: peer facts, or with SPIRE the job's JWT-SVID
    # checked against the same exported bundle), its own process and socket.
    systemd.services.flashpods-proxy = lib.mkIf cfg.proxy.enable {
      description = "Flashpods credential proxy (unix socket beside the token socket)";
      wantedBy = [ "multi-user.target" ];
      after = [
        "flashpods-token.service"
        "flashpods-podman.service"
        "systemd-tmpfiles-setup.service"
      ]
      ++ lib.optional generateCa "flashpods-proxy-ca.service"
      ++ lib.optional cfg.spire.enable "flashpods-spire-bundle.service";
      wants = [
        "flashpods-token.service"
      ]
      ++ lib.optional cfg.spire.enable "flashpods-spire-bundle.service";
      requires = lib.optional generateCa "flashpods-proxy-ca.service";
      environment.FLASHPODS_TOKEN_CONFIG = toString proxyConfig;
      restartTriggers = [
        proxyConfig
        firewallRuleset
      ];
      serviceConfig = fpLib.hardening // {
        ExecStart = lib.getExe' cfg.package.token "flashpods-proxy";
        User = "flashpods-token";
        Group = "flashpods-token";
        # $CREDENTIALS_DIRECTORY (/run/credentials/flashpods-proxy.service):
        # the CA and the secrets it injects, readable by this unit only.
        LoadCredential = [
          "ca.pem:${proxyCa.certFile}"
        ]
        ++ lib.optional (!proxyCa.encrypted) "ca-key.pem:${proxyCa.keyFile}"
        ++ secretCredentials (builtins.attrNames cfg.proxy.rules);
        # Its socket goes beside token.sock; usage files for the API.
        ReadWritePaths = [
          (builtins.dirOf cfg.token.socket)
          cfg.storage.usage
        ];
        # Leaf certificates pass through a private temporary directory.
        PrivateTmp = true;
        # The unix socket, upstream connections over IP, and netlink: the
        # route lookup that refuses addresses routed into the tunnel
        # (refused_interfaces) fails closed without it.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        # Second layer behind its own egress check: the kernel refuses the
        # proxy's sockets every range no job may reach (the firewall
        # template's sets), except the resolvers jobs may query too.
        IPAddressDeny = fpLib.nonpublicNetworks firewallRuleset;
        IPAddressAllow = cfg.firewall.jobResolvers;
        # A client and an upstream socket per connection (512 at most).
        LimitNOFILE = 4096;
        Restart = "always";
        RestartSec = 2;
      }
      // lib.optionalAttrs proxyCa.encrypted {
        LoadCredentialEncrypted = [ "ca-key.pem:${proxyCa.keyFile}" ];
      }
      // {
        # Peer attestation, as the token service: another uid's pid namespace
        # through a pidfd needs CAP_SYS_PTRACE, /proc of the jobs visible.
        CapabilityBoundingSet = [ "CAP_SYS_PTRACE" ];
        AmbientCapabilities = [ "CAP_SYS_PTRACE" ];
        ProtectProc = "default";
        SystemCallFilter = [ "@system-service" ];
      };
    };
  };
}
