# V15-V17: secrets never land on disk or in Podman, retention removes what
# has expired, and the host survives kill -9 of the API and the reaper while
# jobs run; V9/V10 with the module's default (peer) attestation; the
# credential proxy unit, and the placeholder a job holds instead of a secret.
{ self }:
let
  topology = import ./lib/nodes.nix {
    inherit self;
    hostModule.services.flashpods.retention = {
      artifacts = "20s";
      logs = "40s";
      uploads = "20s";
    };
  };
  inherit (topology) secrets;
in
{
  name = "flashpods-retention-crash-safety-no-leaks";
  inherit (topology) nodes;

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.host.services.flashpods;
      proxySocket = "${builtins.dirOf cfg.token.socket}/proxy.sock";
      caKey = cfg.proxy.ca.keyFile;
      caCert = cfg.proxy.ca.certFile;
    in
    ''
      ${topology.preamble nodes}

      start_all()
      wait_for_host()

      with subtest("V17: kill -9 of the API and the reaper loses no job, log or container"):
          jobs = [start_job("for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; sleep 2; done; echo done") for _ in range(2)]
          for job_id in jobs:
              laptop.wait_until_succeeds(
                  f"curl -sf -H 'Authorization: Bearer {API_TOKEN}' {API}/jobs/{job_id} | jq -e '.job.status == \"running\"'",
                  timeout=120)
          host.succeed("systemctl kill --signal=SIGKILL flashpods-api.service flashpods-reaper.service")
          host.wait_until_succeeds("systemctl is-active flashpods-api.service flashpods-reaper.service", timeout=60)
          for job_id in jobs:
              job = wait_final(job_id, timeout=180)
              assert job["status"] == "succeeded", job
              output = job_log(job_id)
              assert [l for l in output.splitlines() if l.startswith("line-")] == [f"line-{i}" for i in range(1, 11)], output
              assert output.rstrip().endswith("done"), output
              host.wait_until_succeeds(
                  f"test -z \"$(podman --url {PODMAN_URL} ps -aq --filter label=flashpods.job={job_id})\"", timeout=120)

      with subtest("V15: a job that received secrets leaves no trace of them"):
          code, upload = api("POST", "/uploads", {})
          laptop.succeed("mkdir -p /tmp/src && echo input > /tmp/src/in.txt")
          laptop.succeed(f"rsync -r /tmp/src/ {upload['rsync_url']}/{upload['upload_id']}/")
          job, output = run_job(
              "test -n \"$GITHUB_TOKEN\" && echo has-token; cp /workspace/in.txt /artifacts/out.txt",
              upload_id=upload["upload_id"])
          assert job["status"] == "succeeded" and "has-token" in output, (job, output)
          assert_no_secret_leaked(["${secrets.github}", "${secrets.anthropic}", API_TOKEN])

      with subtest("V9 V10 with ${cfg.api.settings.attestation} attestation: each role gets exactly its secrets"):
          granted = "for name in GITHUB_TOKEN ANTHROPIC_API_KEY; do printenv $name >/dev/null && echo GRANTED $name; done; true"

          def names(output):
              return sorted(line.split()[1] for line in output.splitlines() if line.startswith("GRANTED "))

          job, output = run_job(granted)
          assert job["status"] == "succeeded" and names(output) == ["GITHUB_TOKEN"], (job, output)
          job, output = run_job(granted, kind="sub_agent")
          assert job["status"] == "succeeded", (job, output)
          assert names(output) == ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"], output
          assert_no_secret_leaked(["${secrets.github}", "${secrets.anthropic}"])

      with subtest("V15 credential proxy: the unit runs, a job holds a placeholder, the CA key stays root's"):
          host.wait_for_unit("flashpods-proxy-ca.service")
          host.wait_for_unit("flashpods-proxy.service")
          host.succeed("test -S ${proxySocket}")
          # Made at first boot by the one-shot: root's, 0600, in a root-only
          # directory; the proxy's own user cannot open it, only its credential.
          assert host.succeed("stat -c '%U %a' ${caKey}").strip() == "root 600"
          assert host.succeed("stat -c '%U %a' ${builtins.dirOf caKey}").strip() == "root 700"
          host.fail("runuser -u flashpods-token -- cat ${caKey}")
          job, output = run_job(
              "printenv GITHUB_TOKEN; curl -sf --unix-socket /run/flashpods/proxy.sock"
              " http://proxy/ca.pem | sha256sum")
          assert job["status"] == "succeeded", (job, output)
          lines = output.split()
          assert f"fpph.GITHUB_TOKEN.{job['id']}" in lines, output
          # The certificate the proxy serves jobs is the host's, made by the one-shot.
          assert host.succeed("sha256sum ${caCert}").split()[0] in lines, output
          assert_no_secret_leaked(["${secrets.github}", "${secrets.anthropic}"])

      with subtest("V16: uploads leave after start, artifacts and logs after their TTL"):
          code, upload = api("POST", "/uploads", {})
          laptop.succeed(f"rsync -r /tmp/src/ {upload['rsync_url']}/{upload['upload_id']}/")
          job, output = run_job("echo kept > /artifacts/a.txt", upload_id=upload["upload_id"])
          host.fail(f"test -e ${cfg.storage.uploads}/{upload['upload_id']}")
          host.succeed(f"test -e ${cfg.storage.artifacts}/{job['id']}/a.txt")
          host.wait_until_fails(f"test -e ${cfg.storage.artifacts}/{job['id']}", timeout=120)
          # The final log is <logs>/<id>.log (services/api/flashpods_api/logs.py).
          host.wait_until_succeeds(f"test -e ${cfg.storage.logs}/{job['id']}.log", timeout=60)
          host.wait_until_fails(f"test -e ${cfg.storage.logs}/{job['id']}.log", timeout=120)
          host.wait_until_fails(f"test -e ${cfg.storage.uploads}/.bases/{upload['upload_id']}", timeout=120)
          code, _ = api("GET", f"/jobs/{job['id']}/artifacts/a.txt")
          assert code in (404, 410), code
    '';
}
