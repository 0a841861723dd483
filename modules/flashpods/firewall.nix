# The project's nftables table (firewall.nft.in, shared with the dev host)
# plus NixOS's own firewall. The table keeps job containers (all traffic of
# the flashpods uid) on the public internet and the DNS resolvers only, and
# the API and rsync for the laptop through the tunnel.
{ config, lib, ... }:
let
  cfg = config.services.flashpods;
  fpLib = import ./lib.nix { inherit lib; };

  isV6 = address: lib.hasInfix ":" address;
  setElements =
    addresses: lib.optionalString (addresses != [ ]) "elements = { ${lib.concatStringsSep ", " addresses} }";

  rendered = fpLib.renderTemplate "firewall.nft.in" (builtins.readFile ./firewall.nft.in) {
    WG_IF = cfg.wireguard.interface;
    LAPTOP_ADDR = cfg.wireguard.laptopAddress;
    API_PORT = cfg.api.port;
    RSYNC_PORT = cfg.rsync.port;
    # Numeric, so `nft --check` in the build sandbox (no /etc/passwd) passes too.
    JOB_UID = cfg.podman.uid;
    # The user's subordinate range (podman.nix), held to the job rules too.
    JOB_SUBUIDS = "${toString cfg.podman.subIdStart}-${
      toString (cfg.podman.subIdStart + cfg.podman.subIdCount - 1)
    }";
    RESOLVERS_V4 = setElements (lib.filter (a: !isV6 a) cfg.firewall.jobResolvers);
    RESOLVERS_V6 = setElements (lib.filter isV6 cfg.firewall.jobResolvers);
  };

  # The template is a complete `nft -f` file (table; delete table; table {…})
  # so the dev host can load it as is. networking.nftables.tables wants only
  # the body and writes the table/delete lines itself.
  body =
    let
      parts = builtins.match "(.*)\ntable inet flashpods [{]\n(.*)\n}\n*" rendered;
    in
    if parts == null then
      throw "flashpods: firewall.nft.in no longer ends with one `table inet flashpods { … }` block; update modules/flashpods/firewall.nix"
    else
      builtins.elemAt parts 1;
in
{
  options.services.flashpods.firewall.jobResolvers = lib.mkOption {
    type = lib.types.listOf lib.types.str;
    default = config.networking.nameservers;
    defaultText = lib.literalExpression "config.networking.nameservers";
    example = [
      "185.12.64.1"
      "2a01:4ff:ff00::add:1"
    ];
    description = ''
      DNS resolvers job containers may query (port 53). Podman's pasta and
      slirp4netns forward a container's DNS to the host's resolvers from a
      socket of the flashpods user, so those must be listed here. Set this
      when the resolvers come from DHCP instead of networking.nameservers.
    '';
  };

  config = lib.mkIf cfg.enable {
    warnings = lib.optional (cfg.firewall.jobResolvers == [ ]) "services.flashpods.firewall.jobResolvers is empty (networking.nameservers is not set): job containers cannot resolve names. Set services.flashpods.firewall.jobResolvers to the host's DNS servers.";

    networking.nftables.enable = true;

    # Podman's netavark keeps its own tables; a `flush ruleset` on reload
    # would delete them under running containers (docs/security.md).
    # nixpkgs sets its own mkDefault (true for stateVersion < 23.11 or with a
    # raw ruleset); 900 wins over that and still yields to a plain setting.
    networking.nftables.flushRuleset = lib.mkOverride 900 false;

    networking.nftables.tables.flashpods = {
      family = "inet";
      content = body;
    };

    # NixOS's firewall (nixos-fw table) drops what it does not allow, and an
    # accept in our table cannot override that drop: the ports the laptop uses
    # are opened on the tunnel interface in wireguard.nix.
    networking.firewall.enable = lib.mkDefault true;

    # Exposed for the VM tests and for `nft -c` checks outside Nix.
    environment.etc."flashpods/firewall.nft".text = rendered;
  };
}
