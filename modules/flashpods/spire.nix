# SPIRE server + agent (docs/spire.md) as the module's own units,
# flashpods-spire-server and flashpods-spire-agent, run from pkgs.spire, with the
# `flashpods` workload attestor plugin (spire/attestor) built by
# modules/pkgs/spire-attestor.nix.
#
# nixos-25.11 has no services.spire (NixOS/nixpkgs#481447 came after the
# branch-off), so nothing here sets or reads it; the units are shaped after
# that later module (nixos/modules/services/security/spire/{server,agent}.nix:
# `run -config <file> -expandEnv`, StateDirectory, RuntimeDirectory, UMask)
# under names of their own, so they never clash with it on unstable.
#
# - Off by default: peer attestation (the token service reads the caller's
#   container from the kernel) needs no SPIRE at all.
# - Workload attestation: only the flashpods plugin. SPIRE's own docker
#   attestor cannot see a rootless Podman job on 25.11's SPIRE 1.13.x (rootless
#   cgroups from 1.15.0 only) nor on any SPIRE on a cgroup-v1 host; the plugin
#   reads PID namespaces through pidfds and the job's labels from the flashpods
#   user's Podman API, so it works with SPIRE 1.13 and later, cgroup v1 and v2.
#   Its selectors are what the API's registrar registers:
#   flashpods:job:<id>, flashpods:kind:<kind>, flashpods:instance:<instance>.
# - Node attestation: a join token made by flashpods-spire-bootstrap before
#   each start of the agent, handed over as a systemd credential with the
#   server's trust bundle (the pattern of nixpkgs' nixos/tests/spire.nix).
#   The token carries the alias spiffe://<td>/agent/host, the parent of
#   every job's registration entry (design.md `spire.parent_id`).
# - The config keys follow the package's version: `join_token_file` exists
#   from SPIRE 1.13.3 (spiffe/spire#6330); an older agent stops on it with
#   "unknown configuration detected", so it gets the token through the
#   long-standing `join_token` key, expanded from its environment.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.flashpods;
  fpLib = import ./lib.nix { inherit lib; };
  flashpodsPkgs = import ../pkgs { inherit pkgs lib; };
  paths = fpLib.spire;
  # SPIRE reads its config with HCL 1, which also parses JSON. Its check for
  # unknown keys (v1.13.3) misreads a JSON file whose first key is `plugins`:
  # it reports the first plugin's keys as unknown top-level keys and refuses
  # the file ("unknown configuration detected"; spire-server validate shows it,
  # tests/integration/spire/test_nixos_spire_configs.py runs it). toJSON sorts
  # keys, and "plugins" < "server", so the file is written with its own section
  # first, by hand.
  spireConfigFile =
    name: section: value:
    pkgs.writeText name ''{"${section}": ${builtins.toJSON value.${section}}, "plugins": ${builtins.toJSON value.plugins}}'';
  td = cfg.spire.trustDomain;
  hostId = fpLib.hostAgentId td;
  spire = cfg.spire.package;
  version = spire.version;

  # The version at which SPIRE gained what this file relies on.
  joinTokenFileVersion = "1.13.3";
  hasJoinTokenFile = lib.versionAtLeast version joinTokenFileVersion;

  serverBin = lib.getExe' spire.server "spire-server";
  agentBin = lib.getExe' spire.agent "spire-agent";
  attestorBin = lib.getExe cfg.package.spireAttestor;
  # The label the API puts on this host's containers, and the plugin's
  # `instance`: it answers only for containers that carry it. Same rule as
  # the plugin's (spire/attestor/attest.go jobIDRe), which refuses to start on
  # anything else.
  instance = cfg.api.settings.instance;
  instanceIsValid = builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}" instance != null;

  # -expandEnv fills $STATE_DIRECTORY and $CREDENTIALS_DIRECTORY at start.
  serverConfig = spireConfigFile "flashpods-spire-server.json" "server" {
    server = {
      trust_domain = td;
      data_dir = "$STATE_DIRECTORY";
      # Only the local agent talks to the server; nothing listens publicly.
      bind_address = "127.0.0.1";
      bind_port = cfg.spire.serverPort;
      # Directly in the RuntimeDirectory (0750, group flashpods-spire-server).
      socket_path = paths.serverSocket;
      default_jwt_svid_ttl = "${toString (fpLib.durationToSeconds cfg.spire.jwtSvidTtl)}s";
    };
    plugins = {
      DataStore.sql.plugin_data = {
        database_type = "sqlite3";
        connection_string = "$STATE_DIRECTORY/datastore.sqlite3";
      };
      # CA keys survive restarts, so issued SVIDs and the bundle stay valid.
      KeyManager.disk.plugin_data.keys_path = "$STATE_DIRECTORY/keys.json";
      NodeAttestor.join_token.plugin_data = { };
    };
  };

  agentConfig = spireConfigFile "flashpods-spire-agent.json" "agent" {
    agent = {
      trust_domain = td;
      data_dir = "$STATE_DIRECTORY";
      server_address = "127.0.0.1";
      server_port = cfg.spire.serverPort;
      socket_path = paths.agentSocket;
      trust_bundle_path = "$CREDENTIALS_DIRECTORY/trust_bundle";
      trust_bundle_format = "pem";
    }
    // (
      if hasJoinTokenFile then
        { join_token_file = "$CREDENTIALS_DIRECTORY/join_token"; }
      else
        # Set by agentStart from the credential: the environment of a process
        # is readable by its own uid and root only, unlike its command line.
        { join_token = "$FLASHPODS_SPIRE_JOIN_TOKEN"; }
    );
    plugins = {
      # The agent's own SVID and key survive restarts: a join token is
      # single use, so the agent must not need a new one after a restart.
      KeyManager.disk.plugin_data.directory = "$STATE_DIRECTORY";
      NodeAttestor.join_token.plugin_data = { };
      # The only workload attestor (see the top of this file). No
      # plugin_checksum: the binary is a store path, read-only and root's, and
      # the config names that exact path; SPIRE logs "Plugin checksum not
      # configured" at start, which is expected here.
      WorkloadAttestor.flashpods = {
        plugin_cmd = attestorBin;
        plugin_data = {
          # The flashpods user's Podman API, served for group flashpods by
          # flashpods-podman.service (podman.nix); see the agent's unit below.
          podman_socket = "unix://${cfg.podman.socket}";
          inherit instance;
        };
      };
    };
  };

  agentStart =
    if hasJoinTokenFile then
      "${agentBin} run -config ${agentConfig} -expandEnv"
    else
      "${pkgs.writeShellScript "flashpods-spire-agent-start" ''
        FLASHPODS_SPIRE_JOIN_TOKEN=$(cat "$CREDENTIALS_DIRECTORY/join_token")
        export FLASHPODS_SPIRE_JOIN_TOKEN
        exec ${agentBin} run -config ${agentConfig} -expandEnv
      ''}";

  # Waits for the server's admin socket (root, from the oneshots below).
  waitForServer = ''
    sock=${lib.escapeShellArg paths.serverSocket}
    for _ in $(seq 1 120); do
      spire-server healthcheck -socketPath "$sock" >/dev/null 2>&1 && break
      sleep 0.5
    done
    spire-server healthcheck -socketPath "$sock"
  '';
in
{
  # Declared here, beside its only user; the other packages are in default.nix.
  options.services.flashpods.package.spireAttestor = lib.mkOption {
    type = lib.types.package;
    default = flashpodsPkgs.flashpods-spire-attestor;
    defaultText = lib.literalExpression "flashpods-spire-attestor built from spire/attestor";
    description = "The `flashpods` SPIRE workload attestor plugin spire-agent loads (only with `spire.enable`).";
  };

  config = lib.mkIf (cfg.enable && cfg.spire.enable) {
    assertions = [
      {
        assertion = instanceIsValid;
        message = "services.flashpods.spire.enable: the flashpods attestor plugin answers only for containers labelled flashpods.instance=<instance>, and services.flashpods.api.settings.instance (${builtins.toJSON instance}, by default networking.hostName) is not such a name: 1 to 128 of A-Z a-z 0-9 _ . -, starting with a letter or digit. Set services.flashpods.api.settings.instance, e.g. \"prod\".";
      }
    ];

    users.users.flashpods-spire-server = {
      isSystemUser = true;
      group = "flashpods-spire-server";
      description = "Flashpods SPIRE server";
    };
    users.groups.flashpods-spire-server = { };
    users.users.flashpods-spire-agent = {
      isSystemUser = true;
      group = "flashpods-spire-agent";
      description = "Flashpods SPIRE agent";
      # How a non-root agent reaches a rootless user's Podman: not through
      # that user's own socket (/run/user/<uid>/podman/podman.sock sits in a
      # 0700 directory; only CAP_DAC_OVERRIDE would open it, a far wider
      # right), but through the socket flashpods-podman.service serves for
      # exactly this, /run/flashpods/podman/podman.sock (0660 in a 0750
      # directory, group flashpods), which the attestor plugin asks for the
      # job containers and their labels. The same group lets the plugin stat
      # a warm container's hand-over file in storage.control (2750, group
      # flashpods) to tell a claimed container from an unclaimed one. Group
      # flashpods means "may drive the sandbox" (design.md): the agent is
      # trusted with that already, since it decides every job's identity.
      extraGroups = [ "flashpods" ];
    };
    users.groups.flashpods-spire-agent = { };

    # The API (entry create/delete per job) uses the server's admin socket.
    users.users.flashpods-api.extraGroups = [ "flashpods-spire-server" ];

    systemd.services.flashpods-spire-server = {
      description = "Flashpods: SPIRE server (job identities)";
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ serverConfig ];
      serviceConfig = fpLib.hardening // {
        ExecStart = "${serverBin} run -config ${serverConfig} -expandEnv";
        # A static user, not nixpkgs' DynamicUser: group
        # flashpods-spire-server (the API user) must reach the admin socket,
        # which SPIRE makes 0770 in a 0750 directory
        # (pkg/server/endpoints/endpoints_posix.go). Nobody else can.
        User = "flashpods-spire-server";
        Group = "flashpods-spire-server";
        StateDirectory = "flashpods-spire/server";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "flashpods-spire/server";
        RuntimeDirectoryMode = "0750";
        UMask = "0007";
        # Rights: none beyond its own state, its socket directory and a TCP
        # listener on 127.0.0.1 for the one local agent.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        IPAddressDeny = "any";
        IPAddressAllow = [ "localhost" ];
        Restart = "on-failure";
        RestartSec = 2;
      };
    };

    # Runs before every start of the agent (a oneshot without
    # RemainAfterExit is re-run by `requires`). Writes the server's current
    # bundle, and a fresh join token only while the agent has not attested
    # yet: once it has, its persisted SVID is used and a token would be waste.
    systemd.services.flashpods-spire-bootstrap = {
      description = "Flashpods: SPIRE join token and trust bundle for the local agent";
      after = [ "flashpods-spire-server.service" ];
      requires = [ "flashpods-spire-server.service" ];
      path = [
        spire.server
        pkgs.gawk
        pkgs.jq
        pkgs.coreutils
      ];
      serviceConfig = {
        Type = "oneshot";
        StateDirectory = "flashpods-spire-bootstrap";
        StateDirectoryMode = "0700";
        UMask = "0077";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_NETLINK"
        ];
        IPAddressDeny = "any";
      };
      script = ''
        set -eu
        state=${paths.bootstrapState}
        ${waitForServer}
        spire-server bundle show -socketPath "$sock" -format pem > "$state/trust_bundle.pem.new"
        mv "$state/trust_bundle.pem.new" "$state/trust_bundle.pem"

        # SPIRE keeps the agent's SVID in agent-data.json (agent_svid.der before 1.6).
        attested=no
        if jq -e '(.svid // []) | length > 0' ${paths.agentState}/agent-data.json >/dev/null 2>&1 \
            || [ -e ${paths.agentState}/agent_svid.der ]; then
          attested=yes
        fi
        if [ "$attested" = yes ] && [ -e "$state/join_token" ]; then
          echo "agent already attested; keeping its SVID"
          exit 0
        fi

        # Earlier aliases belong to agents that no longer exist.
        for entry in $(spire-server entry show -socketPath "$sock" -spiffeID ${lib.escapeShellArg hostId} \
            | awk -F': *' '/^Entry ID/ { print $2 }'); do
          spire-server entry delete -socketPath "$sock" -entryID "$entry"
        done
        spire-server token generate -socketPath "$sock" -spiffeID ${lib.escapeShellArg hostId} -ttl 600 \
          | awk '/^Token:/ { print $2 }' > "$state/join_token.new"
        test -s "$state/join_token.new"
        mv "$state/join_token.new" "$state/join_token"
      '';
    };

    systemd.services.flashpods-spire-agent = {
      description = "Flashpods: SPIRE agent (attests job containers)";
      wantedBy = [ "multi-user.target" ];
      after = [
        "flashpods-spire-bootstrap.service"
        "flashpods-podman.service"
      ];
      requires = [ "flashpods-spire-bootstrap.service" ];
      restartTriggers = [ agentConfig ];
      serviceConfig = fpLib.hardening // {
        ExecStart = agentStart;
        User = "flashpods-spire-agent";
        Group = "flashpods-spire-agent";
        LoadCredential = [
          "join_token:${paths.bootstrapState}/join_token"
          "trust_bundle:${paths.bootstrapState}/trust_bundle.pem"
        ];
        StateDirectory = "flashpods-spire/agent";
        StateDirectoryMode = "0700";
        # The flashpods uid (job containers, which get the workload socket
        # bind-mounted) must traverse to the socket; SPIRE makes the socket
        # itself 0777 (pkg/agent/endpoints/endpoints_posix.go) and creates
        # its public/ directory under this UMask, hence 0022, not 0007.
        RuntimeDirectory = "flashpods-spire/agent";
        RuntimeDirectoryMode = "0755";
        UMask = "0022";
        # Workload attestation reads the calling process's PID namespace
        # (/proc/<pid>/ns/pid, through a pidfd) and that of each job
        # container's init, and those processes belong to other uids (the
        # flashpods user and its subordinate range): the kernel allows it
        # only with ptrace read access, i.e. CAP_SYS_PTRACE. As an ambient
        # capability it reaches the plugin, which spire-agent starts as its
        # child (the plugin refuses to start without it). Running the agent
        # as the flashpods uid instead would put the identity issuer in
        # reach of anything that escapes a container. It is the only
        # capability; ProtectProc=invisible would hide those processes.
        # Nothing here gives file access beyond the agent's groups: the
        # Podman socket is reached through group flashpods (users above).
        CapabilityBoundingSet = [ "CAP_SYS_PTRACE" ];
        AmbientCapabilities = [ "CAP_SYS_PTRACE" ];
        ProtectProc = "default";
        # The plugin (hashicorp/go-plugin) makes its gRPC socket in $TMPDIR
        # (os.TempDir, default /tmp), read-only under ProtectSystem=strict:
        # a private /tmp, which nothing else shares.
        PrivateTmp = true;
        # Unix sockets (workload API, Podman API) and TCP to the server on
        # 127.0.0.1; netlink for the Go runtime's start-up.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        IPAddressDeny = "any";
        IPAddressAllow = [ "localhost" ];
        Restart = "on-failure";
        RestartSec = 2;
      };
    };

    # The token service and the proxy verify JWT-SVIDs against the bundle file
    # the server exports (token config spire.bundle_file). Re-exported every minute, so
    # a rotated JWT key reaches it long before SVIDs signed with it exist
    # (SPIRE publishes new keys ahead of use).
    systemd.services.flashpods-spire-bundle = {
      description = "Flashpods: export the SPIRE trust bundle for the token service";
      after = [ "flashpods-spire-server.service" ];
      requires = [ "flashpods-spire-server.service" ];
      wantedBy = [ "multi-user.target" ];
      before = [
        "flashpods-token.service"
      ]
      ++ lib.optional cfg.proxy.enable "flashpods-proxy.service";
      path = [
        spire.server
        pkgs.coreutils
      ];
      serviceConfig = {
        Type = "oneshot";
        StateDirectory = "flashpods-spire-bundle";
        StateDirectoryMode = "0755";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_NETLINK"
        ];
        IPAddressDeny = "any";
      };
      script = ''
        set -eu
        ${waitForServer}
        spire-server bundle show -socketPath "$sock" -format spiffe > ${paths.bundleFile}.new
        chmod 0644 ${paths.bundleFile}.new
        mv ${paths.bundleFile}.new ${paths.bundleFile}
      '';
    };
    systemd.timers.flashpods-spire-bundle = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnUnitActiveSec = "1min";
        AccuracySec = "5s";
      };
    };

    environment.systemPackages = [ spire ];

    # The API's settings.spire (server_cli from this package, the sockets) are
    # set once, in services.nix.

    services.flashpods.token.settings.spire = {
      bundle_file = paths.bundleFile;
      agent_socket = null;
    };
  };
}
