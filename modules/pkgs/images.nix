# Default job images, loaded into the flashpods user's Podman store at boot.
# Both carry flashpods-init and spire-agent (for `spire-agent api fetch jwt`,
# design.md "The job container contract") under /flashpods/bin, so they run
# without any mount; the API still bind-mounts the host's helper over it.
{
  lib,
  dockerTools,
  buildEnv,
  runCommand,
  bashInteractive,
  coreutils,
  busybox,
  curl,
  cacert,
  python3,
  spire,
  claude-code,
  flashpods-init,
}:
let
  flashpodsBin = runCommand "flashpods-bin" { } ''
    mkdir -p $out/flashpods/bin
    ln -s ${flashpods-init}/bin/flashpods-init $out/flashpods/bin/flashpods-init
    ln -s ${lib.getExe' spire.agent "spire-agent"} $out/flashpods/bin/spire-agent
  '';

  # The agent entrypoint of images/agent (shared with the dev-host image);
  # its interpreter line is rewritten to the image's own Python.
  agentEntrypoint = runCommand "flashpods-agent-entrypoint" { nativeBuildInputs = [ python3 ]; } ''
    install -Dm0555 ${../../images/agent/entrypoint} $out/flashpods/agent/entrypoint
    patchShebangs $out/flashpods/agent/entrypoint
  '';

  # Writable /tmp and a passwd entry for any uid are what keep-id containers
  # and Claude Code need (docs/api.md, "Container contract").
  baseFiles = runCommand "flashpods-image-base" { } ''
    mkdir -p $out/etc
    echo 'root:x:0:0:root:/root:/bin/sh' > $out/etc/passwd
    echo 'root:x:0:' > $out/etc/group
  '';

  commonConfig = {
    Env = [
      "PATH=/bin:/flashpods/bin"
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      "HOME=/tmp/home"
      "TMPDIR=/tmp"
    ];
    WorkingDir = "/workspace";
  };

  # Real directories in the image root (not links into the store), /tmp
  # world-writable for images run without the API's --tmpfs.
  fakeRootCommands = ''
    mkdir -p tmp workspace artifacts
    chmod 1777 tmp
  '';
in
{
  worker-image = dockerTools.buildLayeredImage {
    name = "flashpods-worker";
    tag = "latest";
    contents = [
      busybox
      # busybox has no HTTP client that speaks to a unix socket; jobs and the
      # VM tests use curl (e.g. the token socket, probes).
      curl
      cacert
      flashpodsBin
      baseFiles
    ];
    inherit fakeRootCommands;
    config = commonConfig // {
      Cmd = [ "/bin/sh" ];
    };
  };

  agent-image = dockerTools.buildLayeredImage {
    name = "flashpods-agent";
    tag = "latest";
    contents = [
      (buildEnv {
        name = "flashpods-agent-root";
        paths = [
          bashInteractive
          coreutils
          cacert
          python3
          claude-code
        ];
        pathsToLink = [
          "/bin"
          "/etc"
        ];
      })
      flashpodsBin
      agentEntrypoint
      baseFiles
    ];
    inherit fakeRootCommands;
    config = commonConfig // {
      Cmd = [ "/flashpods/agent/entrypoint" ];
      Env = commonConfig.Env ++ [ "DISABLE_AUTOUPDATER=1" ];
    };
  };
}
