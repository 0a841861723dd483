# The tunnel between the host and the laptop. UDP listenPort is the only port
# open to the internet; everything the laptop uses (API, rsync, SSH) is opened
# on the tunnel interface only.
{ config, lib, ... }:
let
  cfg = config.services.flashpods;
  wg = cfg.wireguard;
  sshPorts = config.services.openssh.ports;
in
{
  config = lib.mkIf cfg.enable {
    networking.wireguard.interfaces.${wg.interface} = {
      ips = [ wg.hostAddress ];
      inherit (wg) listenPort;
      privateKeyFile = wg.privateKeyFile;
      peers = [
        {
          publicKey = wg.laptopPublicKey;
          # Only the laptop's own address: the host routes nothing else into
          # the tunnel, so a job can never use it to reach other peers.
          allowedIPs = [ "${wg.laptopAddress}/32" ];
        }
      ];
    };

    networking.firewall.allowedUDPPorts = [ wg.listenPort ];

    networking.firewall.interfaces.${wg.interface}.allowedTCPPorts = [
      cfg.api.port
      cfg.rsync.port
    ]
    # SSH over the tunnel, always: enabling Flashpods never takes SSH away
    # from the laptop, even when it is closed to the internet.
    ++ lib.optionals config.services.openssh.enable sshPorts;

    # Closed to the internet unless asked for; services.openssh's own default
    # (open everywhere) is overridden at mkDefault so the user keeps the last word.
    services.openssh.openFirewall = lib.mkDefault cfg.ssh.openPublicly;
  };
}
