# The four machines every Flashpods VM test uses (docs/security.md, V1-V20):
#   host      the Flashpods host (services.flashpods), public 203.0.113.1
#   laptop    WireGuard peer 10.0.0.2; runs its own service on the tunnel (V18)
#   stranger  a third machine on the host's public link (V3, V4)
#   internet  a stand-in for the internet on a public-looking documentation
#             range (203.0.113.10): HTTP, DNS, and the metadata stand-in at
#             169.254.169.254
# All four share VLAN 1. The test framework gives each a 192.168.1.x address
# there too; those stay (a private range the jobs must not reach).
#
# The keys and tokens below are for these throwaway VMs only.
#
# nodes.host imports the VM's own hardware and network first, then
# `hostModules`: tests/nixos/lib/render-scripts.nix evaluates those (all but
# the first import) with the module against the typed stubs of
# tests/unit/nix, and renders each testScript from that configuration.
{
  self,
  hostModule ? { },
}:
let
  keys = {
    hostPrivate = "YDWnoWuVRPPQfU5YbcTgpC7S9jJBNO0fnkvdJKhziEw=";
    hostPublic = "ZZSb+/9UfgsFwTaT4MRMkZiNm1a90gng+jek65sfbn8=";
    laptopPrivate = "yLTmnPE7es36iWI1AJfWgrrrr+r+Ca8+Q81U6llaanU=";
    laptopPublic = "s4FAFTXZNpclQ7Akgyplw1RZasmE3rQAflK/gqeRYks=";
  };
  secrets = import ./secrets.nix;

  # A root-only copy in /etc (not a store symlink), like a file the admin
  # put on the host.
  secretFile = text: {
    inherit text;
    mode = "0400";
  };

  # The host VM's size and network (not evaluated by render-scripts.nix).
  hostMachine = {
    imports = [ (publicLink "203.0.113.1" [ ]) ];
    virtualisation.memorySize = 3072;
    virtualisation.diskSize = 8192;
    virtualisation.cores = 2;
    # The metadata stand-in is on the link, as on a cloud host.
    networking.interfaces.eth1.ipv4.routes = [
      {
        address = "169.254.169.254";
        prefixLength = 32;
      }
    ];
  };

  # The host's Flashpods configuration.
  hostSettings =
    { pkgs, lib, ... }:
    {
      # Jobs resolve names through the stand-in internet's DNS.
      networking.nameservers = [ "203.0.113.10" ];
      services.openssh.enable = true;

      environment.etc = {
        "flashpods-test/wg-host.key" = secretFile keys.hostPrivate;
        "flashpods-test/api-token" = secretFile secrets.apiToken;
        "flashpods-test/github" = secretFile secrets.github;
        "flashpods-test/anthropic" = secretFile secrets.anthropic;
      };
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.python3
      ];

      services.flashpods = {
        enable = true;
        wireguard = {
          privateKeyFile = "/etc/flashpods-test/wg-host.key";
          laptopPublicKey = keys.laptopPublic;
        };
        api.tokenFile = "/etc/flashpods-test/api-token";
        # The VMs carry only the small worker image; a sub_agent job runs it
        # with a shell as its "agent" (kind and identity are what is tested).
        api.images = {
          subAgent = "localhost/flashpods-worker:latest";
          load = [ self.packages.${pkgs.stdenv.hostPlatform.system}.worker-image ];
        };
        api.settings.sub_agent.command = [
          "/bin/sh"
          "-c"
          "eval \"$FLASHPODS_PROMPT\""
        ];
        token = {
          policy = {
            worker = [ "GITHUB_TOKEN" ];
            subAgent = [
              "ANTHROPIC_API_KEY"
              "GITHUB_TOKEN"
            ];
          };
          secrets = {
            GITHUB_TOKEN = "/etc/flashpods-test/github";
            ANTHROPIC_API_KEY = "/etc/flashpods-test/anthropic";
          };
        };
        # The credential proxy injects both (peer mode, the default): jobs
        # hold placeholders. Hosts of the stand-in internet's DNS.
        proxy.rules = lib.mkDefault {
          GITHUB_TOKEN = [ "github.example.test" ];
          ANTHROPIC_API_KEY = [ "api.example.test" ];
        };
        spire.jwtSvidTtl = lib.mkDefault "5m";
      };
    };

  hostModules = [
    self.nixosModules.default
    hostSettings
    hostModule
  ];

  publicLink = address: extra: {
    virtualisation.vlans = [ 1 ];
    networking.interfaces.eth1.ipv4.addresses = [
      {
        inherit address;
        prefixLength = 24;
      }
    ]
    ++ extra;
  };
in
{
  inherit keys secrets;

  # What a testScript needs from the host's configuration, with helpers.py.
  preamble =
    nodes:
    let
      cfg = nodes.host.services.flashpods;
      hostIp = builtins.head (builtins.split "/" cfg.wireguard.hostAddress);
    in
    ''
      API_TOKEN = ${builtins.toJSON secrets.apiToken}
      API = ${builtins.toJSON "http://${hostIp}:${toString cfg.api.port}"}
      PODMAN_URL = ${builtins.toJSON "unix://${cfg.podman.socket}"}
      # Where the services keep files; the leak check greps every one.
      HOST_DATA_DIRS = ${
        builtins.toJSON [
          cfg.storage.db
          cfg.storage.uploads
          cfg.storage.workspaces
          cfg.storage.artifacts
          cfg.storage.logs
          cfg.storage.control
          (builtins.dirOf cfg.token.settings.audit_log)
        ]
      }
      ${builtins.readFile ./helpers.py}
    '';

  nodes = {
    host = {
      imports = [ hostMachine ] ++ hostModules;
    };

    laptop =
      { pkgs, ... }:
      {
        imports = [ (publicLink "203.0.113.2" [ ]) ];
        environment.etc."flashpods-test/wg-laptop.key" = secretFile keys.laptopPrivate;
        networking.wireguard.interfaces.wg0 = {
          ips = [ "10.0.0.2/24" ];
          privateKeyFile = "/etc/flashpods-test/wg-laptop.key";
          peers = [
            {
              publicKey = keys.hostPublic;
              endpoint = "203.0.113.1:51820";
              allowedIPs = [ "10.0.0.1/32" ];
              persistentKeepalive = 5;
            }
          ];
        };
        # A service of the laptop's own, reachable through the tunnel: no job
        # may reach it (V18). Opened here so a refusal is the host's doing.
        networking.firewall.interfaces.wg0.allowedTCPPorts = [ 9000 ];
        systemd.services.laptop-private-service = {
          wantedBy = [ "multi-user.target" ];
          after = [ "wireguard-wg0.service" ];
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 9000 --bind 10.0.0.2 --directory /etc";
          serviceConfig.Restart = "always";
        };
        environment.systemPackages = [
          pkgs.curl
          pkgs.jq
          pkgs.rsync
          pkgs.wireguard-tools
        ];
      };

    stranger =
      { pkgs, ... }:
      {
        imports = [ (publicLink "203.0.113.3" [ ]) ];
        # Tries the tunnel addresses too, by routing them at the host.
        networking.interfaces.eth1.ipv4.routes = [
          {
            address = "10.0.0.0";
            prefixLength = 24;
            via = "203.0.113.1";
          }
        ];
        # A machine in a private range (192.168.1.x): jobs must not reach it.
        networking.firewall.allowedTCPPorts = [ 8000 ];
        systemd.services.private-range-service = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8000 --directory /etc";
          serviceConfig.Restart = "always";
        };
        environment.systemPackages = [
          pkgs.curl
          pkgs.rsync
        ];
      };

    internet =
      { pkgs, ... }:
      {
        imports = [
          (publicLink "203.0.113.10" [
            {
              # Stand-in cloud metadata service (link-local).
              address = "169.254.169.254";
              prefixLength = 16;
            }
          ])
        ];
        networking.firewall.allowedTCPPorts = [
          53
          80
        ];
        networking.firewall.allowedUDPPorts = [ 53 ];
        services.dnsmasq = {
          enable = true;
          resolveLocalQueries = false;
          settings = {
            "no-resolv" = true;
            address = [ "/example.test/203.0.113.10" ];
          };
        };
        systemd.services.internet-http = {
          wantedBy = [ "multi-user.target" ];
          # Serves /srv/internet/index.html on every address, 169.254.169.254 too.
          preStart = "mkdir -p /srv/internet && echo hello-from-internet > /srv/internet/index.html";
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 80 --directory /srv/internet";
          serviceConfig.Restart = "always";
        };
      };
  };
}
