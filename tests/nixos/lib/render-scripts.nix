# The testScript of every VM test as text, rendered with the option values a
# host built from lib/nodes.nix would have. Lets the offline checks lint the
# Python the NixOS test driver would run (tests/unit/nix/test_nixos_scripts.py).
#   nix-instantiate --eval --strict --json tests/nixos/lib/render-scripts.nix
let
  self = { };
  hostConfig = {
    services.flashpods = {
      api.port = 8080;
      rsync.port = 873;
      spire = {
        serverPort = 8081;
        trustDomain = "flashpods.internal";
      };
      token.socket = "/run/flashpods/token.sock";
      storage = {
        uploads = "/tmp/flashpods/uploads";
        artifacts = "/var/lib/flashpods/artifacts";
        workspaces = "/var/lib/flashpods/workspaces";
        db = "/var/lib/flashpods/db";
        logs = "/var/log/flashpods";
      };
    };
    services.spire = {
      agent.settings.agent.socket_path = "/run/spire/agent/public/api.sock";
      server.settings.server.socket_path = "/run/spire/server/api.sock";
    };
  };
  render =
    file:
    (import file { inherit self; }).testScript {
      nodes.host = hostConfig;
    };
in
{
  tunnel-and-api = render ../tunnel-and-api.nix;
  container-egress = render ../container-egress.nix;
  spire-attestation = render ../spire-attestation.nix;
  lifecycle = render ../lifecycle.nix;
}
