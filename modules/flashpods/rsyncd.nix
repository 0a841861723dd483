# rsync daemon with one write-only module `uploads`, listening on the tunnel
# address only and accepting only the laptop. Rendered from rsyncd.conf.in,
# the file the dev host renders too. nixpkgs' services.rsyncd is not used:
# it generates its file from `settings` (globalSection/sections) and has no
# option to run a complete rendered file.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.flashpods;
  fpLib = import ./lib.nix { inherit lib; };
  tunnel = fpLib.tunnelUnits cfg.wireguard.interface;

  configFile = pkgs.writeText "flashpods-rsyncd.conf" (
    fpLib.renderTemplate "rsyncd.conf.in" (builtins.readFile ./rsyncd.conf.in) {
      ADDRESS = fpLib.addressWithoutPrefix cfg.wireguard.hostAddress;
      PORT = cfg.rsync.port;
      PID_FILE = "/run/flashpods-rsyncd/rsyncd.pid";
      LOCK_FILE = "/run/flashpods-rsyncd/rsyncd.lock";
      LOG_FILE = "/var/log/flashpods-rsyncd/rsyncd.log";
      MAX_CONNECTIONS = cfg.rsync.maxConnections;
      # The daemon starts as root only to chroot into the module, then takes
      # the API user and the group flashpods for everything it writes.
      USE_CHROOT = "yes";
      UID = "flashpods-api";
      GID = "flashpods";
      UPLOADS = cfg.storage.uploads;
      LAPTOP_ADDR = cfg.wireguard.laptopAddress;
    }
  );
in
{
  options.services.flashpods.rsync.maxConnections = lib.mkOption {
    type = lib.types.ints.positive;
    default = 8;
    description = "Concurrent rsync uploads.";
  };

  config = lib.mkIf cfg.enable {
    systemd.services.flashpods-rsyncd = {
      description = "Flashpods rsync daemon (uploads from the laptop)";
      wantedBy = [ "multi-user.target" ];
      # It binds the tunnel address, which exists once the interface is up
      # (fpLib.tunnelUnits: the same with either WireGuard backend); until
      # then rsync exits and Restart=on-failure tries again, without limit.
      after = tunnel.after ++ [ "systemd-tmpfiles-setup.service" ];
      inherit (tunnel) wants;
      unitConfig.StartLimitIntervalSec = 0;
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStart = "${lib.getExe pkgs.rsync} --daemon --no-detach --config=${configFile}";
        Restart = "on-failure";
        RestartSec = 2;
        RuntimeDirectory = "flashpods-rsyncd";
        LogsDirectory = "flashpods-rsyncd";
        # Root is needed for chroot and setuid to flashpods-api; everything
        # else is taken away.
        CapabilityBoundingSet = [
          "CAP_SYS_CHROOT"
          "CAP_SETUID"
          "CAP_SETGID"
          "CAP_CHOWN"
          "CAP_FOWNER"
          "CAP_DAC_OVERRIDE"
          "CAP_NET_BIND_SERVICE"
        ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.storage.uploads ];
        ProtectHome = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
      };
    };
  };
}
