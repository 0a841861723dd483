"""Type stubs of the NixOS test driver's API, for the offline mypy pass over the VM
tests' scripts (tests/unit/nix/test_nixos_scripts.py): only what the scripts use, with
the signatures of nixpkgs' nixos/lib/test-driver/src/test_driver/machine.py."""
