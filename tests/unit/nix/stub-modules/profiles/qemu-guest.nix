# Stand-in for nixpkgs' nixos/modules/profiles/qemu-guest.nix, which
# modules/hosts/example.nix imports: the real profile only adds virtio kernel
# modules to boot.initrd, which the Flashpods module never reads.
{ }
