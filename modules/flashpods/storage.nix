# Directories and modes of design.md ("Paths"). Retention is the reaper's
# job (retention.* reach it as retention.*_s in the API config), so nothing
# here has a tmpfiles age: systemd-tmpfiles must never delete a job's files.
{ config, lib, ... }:
let
  cfg = config.services.flashpods;
  dir = user: group: mode: {
    d = {
      inherit user group mode;
    };
  };
  apiShared = dir "flashpods-api" "flashpods" "2770";
  controlParent = builtins.dirOf (toString cfg.storage.control);
  declared = map toString (
    with cfg.storage;
    [
      uploads
      workspaces
      artifacts
      logs
      db
    ]
  );
  # The control dir's parent (default /var/lib/flashpods): root's, not group-writable.
  controlParentEntry = lib.optionalAttrs (!(builtins.elem controlParent declared)) {
    ${controlParent} = dir "root" "root" "0755";
  };
in
{
  config = lib.mkIf cfg.enable {
    systemd.tmpfiles.settings."10-flashpods" = controlParentEntry // {
      ${cfg.storage.uploads} = apiShared;
      "${cfg.storage.uploads}/.bases" = dir "flashpods-api" "flashpods" "2750";
      ${cfg.storage.workspaces} = apiShared;
      ${cfg.storage.artifacts} = apiShared;
      ${cfg.storage.logs} = apiShared;
      ${cfg.storage.db} = dir "flashpods-api" "flashpods-api" "0700";
      # Warm containers' hand-over dirs: the API writes, jobs (group flashpods)
      # read. Its parent is root's and not group-writable (default.nix asserts
      # it is none of the shared dirs), so no job can swap the directory.
      ${cfg.storage.control} = dir "flashpods-api" "flashpods" "2750";
      # Per-job model budgets (docs/design.md, "Per-job budget"): the API
      # writes, the proxy (group flashpods-token) reads; the setgid bit gives
      # the API's files that group. Not group flashpods: jobs never see it.
      ${cfg.storage.budgets} = dir "flashpods-api" "flashpods-token" "2750";
      # The token socket's directory: writable by the token service only (so
      # no one else can replace its socket), traversable by group flashpods
      # (containers, the API, the SPIRE agent) to reach the sockets inside.
      # Jobs mount this directory: it holds the socket and nothing else.
      ${builtins.dirOf cfg.token.socket} = dir "flashpods-token" "flashpods" "0750";
      # Its parent (also the Podman socket's) stays root's.
      "/run/flashpods" = dir "root" "root" "0755";
    }
    // lib.optionalAttrs cfg.proxy.enable {
      # The credential proxy's per-job usage files: it writes (0640, group
      # flashpods), the API reads.
      ${cfg.storage.usage} = dir "flashpods-token" "flashpods" "0750";
    }
    // lib.optionalAttrs (cfg.proxy.enable && cfg.proxy.ca.generate) (
      # Where the one-shot makes the proxy's CA: root's alone. systemd reads
      # it and hands the proxy its credentials.
      lib.genAttrs (lib.unique [
        (builtins.dirOf cfg.proxy.ca.keyFile)
        (builtins.dirOf cfg.proxy.ca.certFile)
      ]) (_: dir "root" "root" "0700")
    );
  };
}
