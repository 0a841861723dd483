# Pure helpers shared by the module files. Kept free of `config` and `pkgs`
# so scripts/lib/check-nix.sh can evaluate them with nothing but nixpkgs' lib.
{ lib }:
let
  unitSeconds = {
    s = 1;
    m = 60;
    h = 3600;
    d = 86400;
  };
in
rec {
  # "90s", "30m", "1h", "2d" -> seconds. The spec writes retention as "1h"
  # and "24h"; the services read plain seconds (`*_s` keys of design.md).
  durationToSeconds =
    text:
    let
      parsed = builtins.match "([0-9]+)([smhd])" text;
    in
    if parsed == null then
      throw "flashpods: '${text}' is not a duration; write a number followed by s, m, h or d (e.g. \"1h\")"
    else
      lib.toInt (builtins.elemAt parsed 0) * unitSeconds.${builtins.elemAt parsed 1};

  # Seconds -> the shortest duration text that says them exactly, in h, m or
  # s (3600 -> "1h", 86400 -> "24h", 300 -> "5m"): option defaults taken from
  # apiDefaults read like the durations users write.
  secondsToDuration =
    seconds:
    let
      fits = unit: lib.mod seconds unitSeconds.${unit} == 0;
      unit = lib.findFirst fits "s" [
        "h"
        "m"
      ];
    in
    "${toString (seconds / unitSeconds.${unit})}${unit}";

  # The API's defaults: one packaged file (flashpods_api/defaults.json) that
  # the API loads, the dev host overlays and this module renders, so the three
  # cannot drift. Inside the flake's source, as the module is (flake.nix
  # nixosModules.flashpods = ./modules/flashpods); git must track it.
  apiDefaults = lib.importJSON ../../services/api/flashpods_api/defaults.json;

  # Option type for durations, checked when the configuration is evaluated so
  # a typo fails `nixos-rebuild` with the option's name, not at service start.
  durationType = lib.types.addCheck lib.types.str (
    text: builtins.match "[0-9]+[smhd]" text != null
  ) // {
    description = "duration such as \"30s\", \"15m\", \"1h\" or \"2d\"";
  };

  # Replaces every `@NAME@` placeholder of a shared template (the same files
  # the dev host renders in Python) and refuses to leave one unreplaced, so a
  # placeholder added to the template without a value here fails evaluation.
  renderTemplate =
    name: text: values:
    let
      placeholders = map (key: "@${key}@") (builtins.attrNames values);
      rendered = builtins.replaceStrings placeholders (map toString (builtins.attrValues values)) text;
      leftover = builtins.match "(.*[^@]|)@([A-Z][A-Z0-9_]*)@.*" rendered;
    in
    if leftover != null then
      throw "flashpods: template ${name} has placeholder @${builtins.elemAt leftover 1}@ that the NixOS module does not fill"
    else
      rendered;

  # What no job may reach: the elements of the firewall template's
  # job_nonpublic_v4 and job_nonpublic_v6 sets ("<prefix>/<len>," one per
  # line), the lines the credential proxy's own egress check reads
  # (flashpods_token/egress.py). The proxy's unit denies them in the kernel
  # too (IPAddressDeny), so the template stays the one source.
  nonpublicNetworks =
    text:
    let
      lines = lib.splitString "\n" text;
      matches = pattern: line: builtins.match pattern line != null;
      # Index of the first element that satisfies pred, or null (with lib
      # functions every nixpkgs release has).
      indexOf =
        pred: list:
        lib.findFirst (i: pred (builtins.elemAt list i)) null (
          lib.range 0 (builtins.length list - 1)
        );
      elementsOf =
        name:
        let
          start = indexOf (matches "[[:space:]]*set ${name} [{][[:space:]]*") lines;
          rest = lib.drop (start + 1) lines;
          end = indexOf (matches "[[:space:]]*}[[:space:]]*") rest;
          prefixes = lib.concatMap (
            line:
            let
              found = builtins.match "[[:space:]]*([0-9a-f:.]+/[0-9]+),.*" line;
            in
            if found == null then [ ] else found
          ) (lib.take end rest);
        in
        if start == null || end == null || prefixes == [ ] then
          throw "flashpods: firewall.nft.in has no elements in set ${name}; update nonpublicNetworks in modules/flashpods/lib.nix"
        else
          prefixes;
    in
    elementsOf "job_nonpublic_v4" ++ elementsOf "job_nonpublic_v6";

  # "10.0.0.1/24" -> "10.0.0.1".
  addressWithoutPrefix = cidr: builtins.head (lib.splitString "/" cidr);

  # SPIFFE IDs of design.md ("Token exchange wire format").
  hostAgentId = trustDomain: "spiffe://${trustDomain}/agent/host";

  # Where the module's own SPIRE units (spire.nix) keep their sockets and
  # state. Constants, not options of nixpkgs' services.spire (which
  # nixos-25.11 does not have), so services.nix can name them too.
  spire = rec {
    serverRuntime = "/run/flashpods-spire/server";
    serverSocket = "${serverRuntime}/api.sock";
    agentRuntime = "/run/flashpods-spire/agent";
    # Named agent.sock, alone in public/: the API mounts that directory into jobs
    # (a restarted agent's new socket stays reachable) and looks for that name.
    agentSocket = "${agentRuntime}/public/agent.sock";
    serverState = "/var/lib/flashpods-spire/server";
    agentState = "/var/lib/flashpods-spire/agent";
    bootstrapState = "/var/lib/flashpods-spire-bootstrap";
    bundleFile = "/var/lib/flashpods-spire-bundle/bundle.spiffe";
  };

  # Units of the tunnel interface to order after. The scripted backend has
  # wireguard-<if>.service; with networking.wireguard.useNetworkd there is
  # none (networkd makes the interface), so nothing may *require* it. The
  # device unit exists with both backends; ordering after the service is a
  # no-op where it does not exist. Units that bind the tunnel address also
  # restart until the address is there (the interface comes up before it).
  tunnelUnits = interface: {
    after = [
      "sys-subsystem-net-devices-${interface}.device"
      "wireguard-${interface}.service"
    ];
    wants = [ "sys-subsystem-net-devices-${interface}.device" ];
  };

  # What every long-running Flashpods unit gets; each adds what it needs.
  hardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    CapabilityBoundingSet = "";
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    UMask = "0007";
  };
}
