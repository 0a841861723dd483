# V5-V7, V13, V14, V18-V20: what a job container can reach, tried from inside
# real rootless containers: through the API (Podman's default pasta network
# on NixOS) and directly as the flashpods user in every network mode.
{ self }:
let
  topology = import ./lib/nodes.nix { inherit self; };
in
{
  name = "flashpods-job-containers-reach-only-the-internet";
  inherit (topology) nodes;

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.host.services.flashpods;
      api = toString cfg.api.port;
      rsync = toString cfg.rsync.port;
      spire = toString cfg.spire.serverPort;
    in
    ''
      ${topology.preamble nodes}

      start_all()
      wait_for_host()
      internet.wait_for_unit("internet-http.service")
      internet.wait_for_unit("dnsmasq.service")
      laptop.wait_for_unit("laptop-private-service.service")
      stranger.wait_for_unit("private-range-service.service")

      # Every address of the host, including the test network's and QEMU's.
      host_addresses = host.succeed(
          "ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1"
      ).split()
      assert "10.0.0.1" in host_addresses and "203.0.113.1" in host_addresses, host_addresses
      stranger_private = stranger.succeed("ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1 | grep ^192.168").strip()

      forbidden_api = [f"{a}:${api}" for a in host_addresses] + ["127.0.0.1:${api}"]
      forbidden_rsync = [f"{a}:${rsync}" for a in host_addresses] + ["127.0.0.1:${rsync}"]
      forbidden_other = [
          "127.0.0.1:${spire}",            # the SPIRE server's port
          "10.0.0.1:22", "203.0.113.1:22", # sshd
          "10.0.0.2:9000",                 # the laptop, through the tunnel (V18)
          "169.254.169.254:80",            # metadata stand-in (link-local)
          f"{stranger_private}:8000",      # a private range
      ]
      allowed = ["203.0.113.10:80"]        # the stand-in internet (V7)

      with subtest("positive controls: every other forbidden target is up and reachable by root"):
          # (The API and rsync are refused to everyone but the laptop; V1-V4 cover them.)
          for target in forbidden_other:
              host.succeed(f"rc=0; curl -s -m 5 -o /dev/null http://{target}/ || rc=$?; test $rc -ne 7 -a $rc -ne 28")
          laptop.succeed("curl -sf -m 5 http://10.0.0.2:9000/ -o /dev/null")

      with subtest("V5 V6 V7 V18 V20: a job reaches the internet and nothing else (pasta, via the API)"):
          job, output = run_job(probe_command(forbidden_api + forbidden_rsync + forbidden_other + allowed)
                             + "\nnslookup example.test && echo DNS-OK")
          assert_probes(output, reached=allowed, blocked=forbidden_api + forbidden_rsync + forbidden_other)
          assert "DNS-OK" in output, output
          # The laptop still gets its API replies (V18's other half).
          assert api("GET", "/jobs")[0] == 200

      with subtest("V20: a job cannot reach another running job's container"):
          listener = start_job("busybox httpd -f -p 7000 -h /tmp & sleep 2; curl -s -m 3 -o /dev/null http://127.0.0.1:7000/; echo SELF-$?; sleep 60")
          laptop.wait_until_succeeds(
              f"curl -sf -H 'Authorization: Bearer {API_TOKEN}' {API}/jobs/{listener}/logs | grep -q SELF-", timeout=120)
          job, output = run_job(probe_command([f"{a}:7000" for a in host_addresses] + ["127.0.0.1:7000"]))
          assert_probes(output, blocked=[f"{a}:7000" for a in host_addresses] + ["127.0.0.1:7000"])
          api("POST", f"/jobs/{listener}/kill")
          wait_final(listener)

      with subtest("V13: containers are rootless, run as flashpods, with keep-id"):
          job_id = start_job("id -u; id -g; sleep 30")
          laptop.wait_until_succeeds(
              f"curl -sf -H 'Authorization: Bearer {API_TOKEN}' {API}/jobs/{job_id} | jq -e '.job.status == \"running\"'", timeout=120)
          pid = host.succeed(f"podman --url {PODMAN_URL} inspect -f '{{{{.State.Pid}}}}' {job_id}").strip()
          assert host.succeed(f"stat -c %U /proc/{pid}").strip() == "flashpods"
          uid = host.succeed("id -u flashpods").strip()
          assert host.succeed(f"awk '/^Uid:/ {{print $2}}' /proc/{pid}/status").strip() == uid
          api("POST", f"/jobs/{job_id}/kill")
          job = wait_final(job_id)
          assert job_log(job_id).split()[0] == uid, job_log(job_id)

      with subtest("V14: a sub-agent cannot spawn agents through any host address"):
          before = job_ids()
          spawn = "\n".join(
              f"curl -s -m 4 -o /dev/null -w 'SPAWN {a} %{{http_code}}\\n' -X POST"
              f" -H 'Authorization: Bearer {API_TOKEN}' -H 'Content-Type: application/json'"
              f" -d '{{\"kind\":\"sub_agent\",\"prompt\":\"true\"}}' http://{a}/jobs"
              for a in forbidden_api
          )
          job, output = run_job(spawn, kind="sub_agent")
          spawned = [l for l in output.splitlines() if l.startswith("SPAWN") and not l.endswith(" 000")]
          assert spawned == [], output
          assert job_ids() - before == {job["id"]}

      # slirp4netns is not among them: nixpkgs' Podman (24.11 on) installs it
      # only when containers.conf names it the default rootless network, and
      # pasta is that default; the API runs every job with pasta.
      with subtest("V19: the firewall holds in every rootless network mode"):
          host.succeed("mkdir -p /tmp/probe && chmod 755 /tmp/probe")
          script = probe_command(forbidden_api + forbidden_rsync + forbidden_other + allowed)
          host.succeed(f"cat > /tmp/probe/probe.sh <<'EOF'\n{script}\nEOF\nchmod 644 /tmp/probe/probe.sh")
          host.succeed(as_flashpods("podman network exists fp-test-bridge || podman network create fp-test-bridge"))
          for mode in ("pasta", "fp-test-bridge", "host"):
              output = host.succeed(as_flashpods(
                  f"podman run --rm --userns=keep-id --network={mode} -v /tmp/probe:/probe:ro"
                  f" localhost/flashpods-worker:latest sh /probe/probe.sh"))
              assert_probes(output, reached=allowed, blocked=forbidden_api + forbidden_rsync + forbidden_other)

      # An escaped process can ask the flashpods user's Podman for `--user 1
      # --network host`: its sockets then belong to a subordinate uid, which the
      # firewall must hold to the job rules (job_uids), not treat as the host's.
      with subtest("V5 V6 V18: a subordinate uid on the host network is held like a job"):
          first = ${toString nodes.host.services.flashpods.podman.subIdStart}
          subuids = host.succeed("grep '^flashpods:' /etc/subuid").strip()
          assert subuids == f"flashpods:{first}:${toString nodes.host.services.flashpods.podman.subIdCount}", subuids
          output = host.succeed(as_flashpods(
              "podman run --rm --user 1 --network=host -v /tmp/probe:/probe:ro"
              " localhost/flashpods-worker:latest sh -c 'id -u; sh /probe/probe.sh'"))
          assert_probes(output, reached=allowed, blocked=forbidden_api + forbidden_rsync + forbidden_other)

      # (Not the API token: V14 hands it to a job on purpose, as a stolen token.)
      assert_no_secret_leaked(["${topology.secrets.github}", "${topology.secrets.anthropic}"])
    '';
}
