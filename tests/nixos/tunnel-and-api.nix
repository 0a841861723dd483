# V1-V4: the laptop reaches the API and rsync through WireGuard with the
# bearer token; nobody else does, not even on the host's public address.
{ self }:
let
  topology = import ./lib/nodes.nix { inherit self; };
in
{
  name = "flashpods-laptop-only-api-and-rsync";
  inherit (topology) nodes;

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.host.services.flashpods;
    in
    ''
      ${topology.preamble nodes}

      start_all()
      wait_for_host()

      with subtest("V1: the laptop reaches the API over WireGuard with the bearer token"):
          code, body = api("GET", "/jobs")
          assert code == 200, (code, body)
          laptop.succeed("wg show wg0 latest-handshakes | grep -v '\t0$'")

      with subtest("V2: a missing or wrong bearer token gets 401 and creates no job"):
          before = job_ids()
          for token in ("", "wrong-token"):
              code, _ = api("POST", "/jobs", {"kind": "worker", "command": "true"}, token=token)
              assert code == 401, f"token {token!r}: {code}"
          assert job_ids() == before

      with subtest("V3: the API is unreachable except from the laptop over WireGuard"):
          # From the stranger: the tunnel address (routed at the host) and the
          # host's public address; both refused.
          for address in ("10.0.0.1", "203.0.113.1"):
              stranger.fail(f"curl -sS -m 5 http://{address}:${toString cfg.api.port}/healthz")
          # The laptop outside the tunnel (its public address) is refused too.
          laptop.fail("curl -sS -m 5 --interface 203.0.113.2 http://203.0.113.1:${toString cfg.api.port}/healthz")
          # The API's own peer check is the second layer: the host itself,
          # from loopback, is not the laptop.
          host.fail("curl -sSf -m 5 -H 'Authorization: Bearer ${topology.secrets.apiToken}' http://10.0.0.1:${toString cfg.api.port}/jobs")

      with subtest("V4: rsync accepts uploads only from the laptop"):
          code, upload = api("POST", "/uploads", {})
          assert code == 201, (code, upload)
          laptop.succeed("mkdir -p /tmp/up && echo payload > /tmp/up/file.txt")
          laptop.succeed(f"rsync -r /tmp/up/ {upload['rsync_url']}/{upload['upload_id']}/")
          host.succeed(f"test -f ${cfg.storage.uploads}/{upload['upload_id']}/file.txt")
          stranger.succeed("mkdir -p /tmp/up && echo intruder > /tmp/up/evil.txt")
          for address in ("10.0.0.1", "203.0.113.1"):
              stranger.fail(f"rsync -r --contimeout=5 /tmp/up/ rsync://{address}:${toString cfg.rsync.port}/uploads/{upload['upload_id']}/")
          host.fail("find ${cfg.storage.uploads} -name evil.txt | grep -q .")

      with subtest("only WireGuard is open to the internet"):
          stranger.fail("curl -sS -m 5 http://203.0.113.1:${toString cfg.rsync.port}/")
          # SSH is closed publicly (ssh.openPublicly defaults to false) and open over the tunnel.
          stranger.fail("timeout 5 bash -c 'exec 3<>/dev/tcp/203.0.113.1/22'")
          laptop.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.0.1/22'")

      assert_no_secret_leaked(["${topology.secrets.github}", "${topology.secrets.anthropic}"])
    '';
}
