# Typed stand-ins for exactly the NixOS options that modules/flashpods (and
# modules/hosts/example.nix, and the VM tests' host settings) set or read, so
# the module evaluates with nothing but nixpkgs' `lib` (lib.evalModules; no
# package set, no NixOS module tree).
#
# Each option is declared with the type and default nixpkgs gives it, in the
# file and at the commit named in its comment (read with the search tool's
# read_file on NixOS/nixpkgs; the index does not hold every file at the
# nixos-25.11 pin, so the commit is the copy that was read; docs/nixos.md
# lists them). No freeform type unless nixpkgs' own option is one. An option
# that is not declared here fails evaluation with nixpkgs' own message,
# "The option `<name>' does not exist", and a read of one fails with
# "attribute '<name>' missing": tests/unit/nix/test_nix_module.py checks both.
{ lib }:
let
  inherit (lib) types mkOption;

  option = type: default: mkOption { inherit type default; };

  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      meta = { };
    }
    // extra;

  # nixos/lib/systemd-lib.nix: unitNameType.
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix (01f31c2ee7d045a337dff0f858c0ed61dd0f4ddb):
  # unitOption, the value type of serviceConfig/timerConfig. Lists of
  # definitions concatenate; anything else must be defined once (or equal).
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if builtins.isList (builtins.head defs').value then
        lib.concatMap (
          def:
          if builtins.isList def.value then
            def.value
          else
            throw "The definitions for systemd unit options should be either all lists, representing repeatable options, or all non-lists, but for the option ${lib.showOption loc}, the definitions are a mix of list and non-list"
        ) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  # Same file: checkService asserts Type and Restart are systemd's values.
  checkService =
    config:
    let
      oneOf = name: values: !(config ? ${name}) || builtins.elem config.${name} values;
    in
    oneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && oneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ];
  unitNames = option (types.listOf unitNameType) [ ];
  environmentValue = types.nullOr (
    types.oneOf [
      types.str
      types.path
      types.package
    ]
  );
  pathEntry = types.oneOf [
    types.package
    types.str
  ];

  # Same file: commonUnitOptions, stage2CommonUnitOptions, serviceOptions
  # (only the options the module sets).
  serviceType = types.submodule {
    options = {
      description = option types.singleLineStr "";
      wantedBy = unitNames;
      requires = unitNames;
      wants = unitNames;
      after = unitNames;
      before = unitNames;
      unitConfig = option (types.attrsOf unitOption) { };
      restartTriggers = option (types.listOf types.unspecified) [ ];
      environment = option (types.attrsOf environmentValue) { };
      path = option (types.listOf pathEntry) [ ];
      serviceConfig = option (types.addCheck (types.attrsOf unitOption) checkService) { };
      script = option types.lines "";
    };
  };
  timerType = types.submodule {
    options = {
      wantedBy = unitNames;
      timerConfig = option (types.attrsOf unitOption) { };
    };
  };

  # nixos/modules/system/boot/systemd/tmpfiles.nix
  # (046599161540943279017d69898de50acb9cda3b): settings.<file>.<path>.<type>.
  tmpfilesEntry = types.submodule (
    { name, ... }:
    {
      options = {
        type = option types.str name;
        mode = option types.str "-";
        user = option types.str "-";
        group = option types.str "-";
        age = option types.str "-";
        argument = option types.str "";
      };
    }
  );

  tmpfilesSettings = types.attrsOf (types.attrsOf (types.attrsOf tmpfilesEntry));

  # nixos/modules/config/users-groups.nix
  # (005ab72f9cf5a75cdcd9ff672fb4a3b03391619f): userOpts, only what is set.
  userType = types.submodule {
    options = {
      description = option (types.passwdEntry types.str) "";
      uid = option (types.nullOr types.int) null;
      isSystemUser = option types.bool false;
      isNormalUser = option types.bool false;
      group = option types.str "";
      extraGroups = option (types.listOf types.str) [ ];
      home = option (types.passwdEntry types.path) "/var/empty";
      createHome = option types.bool false;
      shell = option shellType pkgs.shadow;
      autoSubUidGidRange = option types.bool false;
      subUidRanges = option (types.listOf subordinateUidRange) [ ];
      subGidRanges = option (types.listOf subordinateGidRange) [ ];
      linger = option (types.nullOr types.bool) null;
      # nixos/modules/services/networking/ssh/sshd.nix (userOptions), used by
      # modules/hosts/example.nix for root.
      openssh.authorizedKeys.keys = option (types.listOf types.singleLineStr) [ ];
    };
  };
  # Same file: subordinateUidRange / subordinateGidRange.
  subordinateUidRange = types.submodule {
    options = {
      startUid = mkOption { type = types.int; };
      count = option types.int 1;
    };
  };
  subordinateGidRange = types.submodule {
    options = {
      startGid = mkOption { type = types.int; };
      count = option types.int 1;
    };
  };
  shellType = types.nullOr (types.either types.shellPackage (types.passwdEntry types.path));
  # Same file: groupOpts; the module only declares groups (`{ }`).
  groupType = types.submodule {
    options.gid = option (types.nullOr types.int) null;
  };

  # nixos/modules/services/networking/wireguard.nix
  # (0056e44b7f3674b1ab893335c312d799f6f5bae4): interfaceOpts and peerOpts.
  wireguardPeer = types.submodule {
    options = {
      publicKey = option (types.nullOr types.str) null;
      allowedIPs = mkOption { type = types.listOf types.str; };
      endpoint = option (types.nullOr types.str) null;
      persistentKeepalive = option (types.nullOr types.int) null;
    };
  };
  wireguardInterface = types.submodule {
    options = {
      ips = option (types.listOf types.str) [ ];
      privateKeyFile = option (types.nullOr types.path) null;
      listenPort = option (types.nullOr types.int) null;
      peers = option (types.listOf wireguardPeer) [ ];
    };
  };

  # nixos/modules/services/networking/nftables.nix
  # (048ef0d45573d89195d69bdb5045aa50fa94d6a0): tableSubmodule.
  nftablesTable = types.submodule (
    { name, ... }:
    {
      options = {
        enable = option types.bool true;
        name = mkOption { type = types.str; };
        content = mkOption { type = types.lines; };
        family = mkOption {
          type = types.enum [
            "ip"
            "ip6"
            "inet"
            "arp"
            "bridge"
            "netdev"
          ];
        };
      };
      config.name = lib.mkDefault name;
    }
  );

  # nixos/modules/services/networking/firewall.nix
  # (0192bb844360b5b42ebaf7f575f84d79910a5927): commonOptions, per interface
  # and global: `listOf port`, sorted and deduplicated by `apply`.
  portList = mkOption {
    type = types.listOf types.port;
    default = [ ];
    apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
  };
  firewallInterface = types.submodule {
    options.allowedTCPPorts = portList;
  };

  # nixos/modules/config/sysctl.nix (05924f714f31ff83bd10ed1710638688999c3725,
  # an index copy with unrelated merge markers): sysctlOption, and the
  # option's own freeform attribute set (nixpkgs declares it freeform).
  sysctlValue = lib.mkOptionType {
    name = "sysctl option value";
    check =
      value:
      let
        ok = x: builtins.isBool x || builtins.isString x || builtins.isInt x || x == null;
      in
      ok value || (value._type or "" == "override" && ok value.content);
    merge = loc: defs: lib.mergeOneOption loc (lib.filterOverrides defs);
  };

  # nixos/modules/tasks/network-interfaces.nix: networking.hostName.
  hostNameType = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";

  # nixos/modules/system/etc/etc.nix (05924f714f31ff83bd10ed1710638688999c3725):
  # environment.etc.<name>, what is set.
  etcType = types.submodule {
    options = {
      text = option (types.nullOr types.lines) null;
      mode = option types.str "symlink";
    };
  };

  # nixos/modules/tasks/filesystems.nix: fileSystems.<mount> (example.nix).
  fileSystemType = types.submodule {
    options = {
      device = option (types.nullOr types.nonEmptyStr) null;
      fsType = option types.nonEmptyStr "auto";
    };
  };

  # pkgs.formats.json's value type, rebuilt from lib alone
  # (pkgs/pkgs-lib/formats.nix: json = { }: { type = valueType; ... }).
  jsonValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonValue)
        (types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };

  pkgs = {
    path = "/nonexistent-nixpkgs";
    stdenv.hostPlatform.system = "x86_64-linux";
    formats.json = _: {
      type = jsonValue;
      # The "store path" of a generated file is its content, so a test reads
      # exactly what a service would be given wherever the path is used.
      generate = name: value: fakeDrv name { outPath = builtins.toJSON value; };
    };
    writeText = name: text: fakeDrv name { outPath = text; };
    writeShellScript = name: text: fakeDrv name { outPath = "#!/bin/sh\n" + text; };
    python3 = fakeDrv "python3" { withPackages = _: fakeDrv "python3-env" { }; };
    # pkgs/by-name/sp/spire/package.nix: outputs out, agent, server (oidc
    # from 1.13.3). The version is the test's; nixos-25.11 has 1.13.x.
    spire = spireOf "1.13.3";
    rsync = fakeDrv "rsync" { meta.mainProgram = "rsync"; };
    podman = fakeDrv "podman" { meta.mainProgram = "podman"; };
    gawk = fakeDrv "gawk" { };
    jq = fakeDrv "jq" { };
    curl = fakeDrv "curl" { };
    coreutils = fakeDrv "coreutils" { };
    shadow = fakeDrv "shadow" { shellPath = "/bin/nologin"; };

    # pkgs/top-level/splice.nix callPackage, reduced: a file's function gets the
    # attributes of this set it names, then the given ones.
    callPackage =
      file: extra:
      let
        f = import file;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) (pkgs // { inherit lib; }) // extra);

    # pkgs/build-support/go/module.nix as nixos-25.11 has it: read at 010277de
    # (the index's copy; the arguments used here have kept their meaning) and
    # the 25.11 release notes (doc/release-notes/rl-2511.section.md at
    # 00030d51: "Specifying CGO_ENABLED directly now results in an error", it
    # goes into `env`). No build: the result records what it was given, with
    # `src` as the directory it was cleaned from (a string, so evaluating it
    # copies nothing into the store).
    buildGoModule =
      args:
      assert lib.assertMsg (!(args ? CGO_ENABLED)) "buildGoModule: set env.CGO_ENABLED, not CGO_ENABLED (nixos-25.11)";
      assert lib.assertMsg (args ? vendorHash) "buildGoModule: vendorHash is missing";
      assert lib.assertMsg (!(args ? vendorSha256)) "buildGoModule: Expect vendorHash instead of vendorSha256";
      fakeDrv "${args.pname}-${args.version}" {
        inherit (args) pname version;
        meta = args.meta or { };
        goModuleArgs = {
          inherit (args) vendorHash;
          src = toString (args.src.origSrc or args.src);
          env = args.env or { };
          ldflags = args.ldflags or [ ];
          postInstall = args.postInstall or "";
          proxyVendor = args.proxyVendor or false;
          doCheck = args.doCheck or true;
        };
      };
  };

  spireOf =
    version:
    fakeDrv "spire-${version}" {
      inherit version;
      agent = fakeDrv "spire-${version}-agent" { };
      server = fakeDrv "spire-${version}-server" { };
    };
in
{
  inherit pkgs fakeDrv spireOf;

  module = {
    config._module.args.pkgs = pkgs;

    options = {
      # nixos/modules/misc/assertions.nix (08062fccc11d1bf6e5e6a7bdc1e86eba3fb0c0bf).
      assertions = option (types.listOf types.unspecified) [ ];
      warnings = option (types.listOf types.str) [ ];

      networking = {
        # nixos/modules/tasks/network-interfaces.nix.
        hostName = option hostNameType "nixos";
        nameservers = option (types.listOf types.str) [ ];
        useDHCP = option types.bool true;

        nftables = {
          enable = option types.bool false;
          # A newer copy of nftables.nix: mkEnableOption, nixpkgs then sets
          # it with mkDefault (true below stateVersion 23.11 or with a raw
          # ruleset); the module overrides that at priority 900.
          flushRuleset = option types.bool false;
          tables = option (types.attrsOf nftablesTable) { };
        };

        firewall = {
          enable = option types.bool true;
          allowedUDPPorts = portList;
          interfaces = option (types.attrsOf firewallInterface) { };
        };

        wireguard = {
          interfaces = option (types.attrsOf wireguardInterface) { };
          # nixos/modules/services/networking/wireguard-networkd.nix
          # (0586ddf7fdc8d15f1efe8b4954e00f3753832cc3).
          useNetworkd = option types.bool false;
        };
      };

      # nixos/modules/services/networking/ssh/sshd.nix: enable, ports and
      # openFirewall as known (not re-read); settings.PasswordAuthentication
      # (nullOr bool, true) seen in an index excerpt of the file.
      services.openssh = {
        enable = option types.bool false;
        ports = option (types.listOf types.port) [ 22 ];
        openFirewall = option types.bool true;
        # nixpkgs' own `settings` is freeform (RFC 42), with typed keys.
        settings = mkOption {
          type = types.submodule {
            freeformType = types.attrsOf (
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.int
                  types.str
                  (types.listOf types.str)
                ]
              )
            );
            options.PasswordAuthentication = option (types.nullOr types.bool) true;
          };
          default = { };
        };
      };

      boot = {
        # nixos/modules/config/sysctl.nix.
        kernel.sysctl = mkOption {
          type = types.submodule { freeformType = types.attrsOf sysctlValue; };
          default = { };
        };
        # nixos/modules/system/boot/loader/grub/grub.nix (example.nix).
        loader.grub = {
          enable = option types.bool true;
          device = option types.str "";
        };
        # nixos/modules/system/boot/kernel.nix (example.nix).
        initrd.availableKernelModules = option (types.listOf types.str) [ ];
      };

      fileSystems = option (types.attrsOf fileSystemType) { };
      # nixos/modules/config/swap.nix (example.nix sets it empty).
      swapDevices = option (types.listOf (types.submodule { })) [ ];
      # nixos/modules/misc/version.nix: defaults to the release, with a
      # warning; the pin is nixos-25.11.
      system.stateVersion = option types.str "25.11";

      # nixos/modules/virtualisation/podman/default.nix
      # (007b68856e60bb9b0384d6f266d385a56e44d34f).
      virtualisation.podman = {
        enable = option types.bool false;
        package = option types.package pkgs.podman;
      };

      users = {
        users = option (types.attrsOf userType) { };
        groups = option (types.attrsOf groupType) { };
      };

      systemd = {
        services = option (types.attrsOf serviceType) { };
        timers = option (types.attrsOf timerType) { };
        tmpfiles.settings = option tmpfilesSettings { };
      };

      environment = {
        # nixos/modules/config/system-path.nix.
        systemPackages = option (types.listOf types.package) [ ];
        etc = option (types.attrsOf etcType) { };
      };
    };
  };

  # modules/hosts/example.nix imports (modulesPath + "/profiles/qemu-guest.nix");
  # that profile only adds virtio kernel modules, none of which the module reads.
  modulesPath = ./stub-modules;
}
