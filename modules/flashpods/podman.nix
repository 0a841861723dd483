# Rootless Podman for the user `flashpods`, which runs every job container
# and nothing else. Its Podman API is served by a system unit at
# /run/flashpods/podman/podman.sock (group flashpods): the API drives it from
# its own user, and the SPIRE agent's flashpods attestor plugin asks it which
# job containers run (spire.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.flashpods;
  uid = toString cfg.podman.uid;
  runtimeDir = "/run/user/${uid}";
  podmanSocket = "/run/flashpods/podman/podman.sock";

  # What a rootless Podman of this user needs in its environment when it is
  # started by the system manager rather than a login session.
  podmanEnvironment = {
    HOME = config.users.users.flashpods.home;
    XDG_RUNTIME_DIR = runtimeDir;
    # cgroup_manager=systemd talks to the user's own systemd (lingering).
    DBUS_SESSION_BUS_ADDRESS = "unix:path=${runtimeDir}/bus";
  };
  userManager = "user@${uid}.service";
in
{
  options.services.flashpods.podman.socket = lib.mkOption {
    type = lib.types.str;
    default = podmanSocket;
    readOnly = true;
    description = "Podman API socket of the flashpods user (read-only; for the other services and tests).";
  };

  config = lib.mkIf cfg.enable {
    virtualisation.podman.enable = true;

    # Each job container's runtime makes a session keyring for the job's mapped uid; the
    # kernel's default quota (200 keys, 20000 bytes per user) stops the ~200th concurrent
    # job with "unable to create session key: disk quota exceeded" (benchmark P4a).
    boot.kernel.sysctl = {
      "kernel.keys.maxkeys" = lib.mkDefault 2000;
      "kernel.keys.maxbytes" = lib.mkDefault 2000000;
    };

    users.groups.flashpods = { };
    users.users.flashpods = {
      uid = cfg.podman.uid;
      group = "flashpods";
      description = "Flashpods job containers (rootless Podman)";
      # A normal user gets sub-uid/gid ranges and a user systemd manager;
      # it has no password and no login shell.
      isNormalUser = true;
      home = "/var/lib/flashpods-podman";
      createHome = true;
      shell = "${pkgs.shadow}/bin/nologin";
      # An explicit range, not autoSubUidGidRange: the firewall must hold these
      # uids to the job rules and so must know them at evaluation time (a
      # container's `--user 1` is a uid from this range on the host).
      autoSubUidGidRange = false;
      subUidRanges = [
        {
          startUid = cfg.podman.subIdStart;
          count = cfg.podman.subIdCount;
        }
      ];
      subGidRanges = [
        {
          startGid = cfg.podman.subIdStart;
          count = cfg.podman.subIdCount;
        }
      ];
      # Its user manager (and so /run/user/<uid> and cgroup delegation for
      # its containers) must run without anyone logged in.
      linger = true;
    };

    systemd.services.flashpods-podman = {
      description = "Podman API of the flashpods user (rootless)";
      wantedBy = [ "multi-user.target" ];
      after = [ userManager ];
      requires = [ userManager ];
      environment = podmanEnvironment;
      path = [
        config.virtualisation.podman.package
        "/run/wrappers"
      ];
      serviceConfig = {
        User = "flashpods";
        Group = "flashpods";
        # /run/flashpods/podman, 0750 flashpods:flashpods; the socket 0660.
        RuntimeDirectory = "flashpods/podman";
        RuntimeDirectoryMode = "0750";
        RuntimeDirectoryPreserve = false;
        UMask = "0007";
        ExecStart = "${lib.getExe config.virtualisation.podman.package} system service --time=0 unix://${podmanSocket}";
        Restart = "always";
        RestartSec = 2;
        # Containers started through the socket live in the user's own
        # systemd scopes, not in this unit: stopping it leaves jobs running.
        KillMode = "process";
      };
    };

    # Load the job images into the flashpods user's store at boot, so the host
    # needs no registry. `podman load` of an image already present is cheap.
    systemd.services.flashpods-images = {
      description = "Load Flashpods job images into the flashpods user's Podman store";
      wantedBy = [ "multi-user.target" ];
      after = [ userManager ];
      requires = [ userManager ];
      before = [ "flashpods-api.service" ];
      environment = podmanEnvironment;
      path = [
        config.virtualisation.podman.package
        "/run/wrappers"
      ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = "flashpods";
        Group = "flashpods";
      };
      script = lib.concatMapStrings (image: ''
        echo "loading ${image}"
        podman load --quiet --input ${image}
      '') cfg.api.images.load;
    };
  };
}
