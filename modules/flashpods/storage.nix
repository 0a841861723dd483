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
in
{
  config = lib.mkIf cfg.enable {
    systemd.tmpfiles.settings."10-flashpods" = {
      ${cfg.storage.uploads} = apiShared;
      "${cfg.storage.uploads}/.bases" = dir "flashpods-api" "flashpods" "2750";
      ${cfg.storage.workspaces} = apiShared;
      ${cfg.storage.artifacts} = apiShared;
      ${cfg.storage.logs} = apiShared;
      ${cfg.storage.db} = dir "flashpods-api" "flashpods-api" "0700";
      # The token socket's directory: writable by the token service only (so
      # no one else can replace its socket), traversable by group flashpods
      # (containers, the API, the SPIRE agent) to reach the sockets inside.
      ${builtins.dirOf cfg.token.socket} = dir "flashpods-token" "flashpods" "0750";
    };
  };
}
