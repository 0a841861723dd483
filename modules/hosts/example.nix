# nixosConfigurations.example: a complete Flashpods host on a rented x86_64
# box (e.g. a Hetzner cloud server booted into NixOS). Copy it, then replace:
#   - the disk layout below with yours (`nixos-generate-config` prints it);
#   - the key and token paths (see docs/nixos.md, "Deploying from zero");
#   - laptopPublicKey with your laptop's WireGuard public key.
{ modulesPath, ... }:
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  # --- The user's: disk layout and boot loader (placeholder values). -------
  boot.loader.grub.enable = true;
  boot.loader.grub.device = "/dev/sda";
  boot.initrd.availableKernelModules = [
    "ata_piix"
    "virtio_pci"
    "virtio_scsi"
    "sd_mod"
  ];
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  swapDevices = [ ];
  # ----------------------------------------------------------------------

  networking.hostName = "flashpods";
  networking.useDHCP = true;
  # Resolvers job containers may query (services.flashpods.firewall.jobResolvers
  # defaults to these). Hetzner's public resolvers; use your provider's.
  networking.nameservers = [
    "185.12.64.1"
    "185.12.64.2"
  ];

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  users.users.root.openssh.authorizedKeys.keys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleReplaceWithYourOwnKeyxxxxxxxxxxxxxxx you@laptop"
  ];

  services.flashpods = {
    enable = true;
    wireguard = {
      privateKeyFile = "/var/lib/flashpods-secrets/wg-host.key";
      laptopPublicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    };
    # First deployment: keep SSH open publicly until the tunnel works, then
    # set this to false (the default) and switch again.
    ssh.openPublicly = true;
    api.tokenFile = "/var/lib/flashpods-secrets/api-token";
    token = {
      policy = {
        worker = [ "GITHUB_TOKEN" ];
        subAgent = [
          "ANTHROPIC_API_KEY"
          "GITHUB_TOKEN"
        ];
      };
      secrets = {
        ANTHROPIC_API_KEY = "/var/lib/flashpods-secrets/anthropic";
        GITHUB_TOKEN = "/var/lib/flashpods-secrets/github";
      };
    };
    # Every secret stays on the host: the credential proxy adds it to
    # requests to these hosts only; jobs hold placeholders. Its CA is made
    # at first boot in /var/lib/flashpods/proxy-ca (docs/nixos.md).
    proxy.rules = {
      ANTHROPIC_API_KEY = [ "api.anthropic.com" ];
      GITHUB_TOKEN = [
        "github.com"
        "api.github.com"
        "codeload.github.com"
      ];
    };
  };

  system.stateVersion = "25.11";
}
