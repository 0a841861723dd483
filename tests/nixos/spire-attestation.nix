# V8-V12 with SPIRE end to end, on the pin's own pkgs.spire (1.13.x on
# nixos-25.11): the API registers each job with the SPIRE server under the
# flashpods selectors (job, kind, instance), the agent's `flashpods` workload
# attestor plugin (modules/pkgs/spire-attestor.nix) finds the caller's job from
# its PID namespace and the job's labels from the flashpods user's Podman
# socket, the helper fetches a JWT-SVID, and the token service hands out
# exactly the role's secrets while the job runs, and nothing to anyone else.
# cgroup v2 (these VMs) is proven here; the plugin's own tests cover v1.
{ self }:
let
  topology = import ./lib/nodes.nix {
    inherit self;
    hostModule.services.flashpods = {
      spire = {
        # Off by default (peer attestation).
        enable = true;
        # Short-lived SVIDs, so expiry is tested within the run.
        jwtSvidTtl = "30s";
      };
      # This test checks the token service's own exchange with SPIRE: the
      # secrets go the old way, named explicitly, and each role gets exactly
      # its values. The proxy with SPIRE (on by default there) is evaluated in
      # tests/unit/nix and run for real on the dev host
      # (tests/integration/proxy/test_proxy_spire_jobs.py).
      proxy = {
        enable = false;
        rules = { };
      };
      token.envDelivery = [
        "GITHUB_TOKEN"
        "ANTHROPIC_API_KEY"
      ];
    };
  };
  inherit (topology) secrets;
in
{
  name = "flashpods-spire-attested-secrets";
  inherit (topology) nodes;

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.host.services.flashpods;
      agentSocket = cfg.api.settings.spire.agent_socket;
      attestor = "${cfg.package.spireAttestor}/bin/flashpods-spire-attestor";
      inherit (cfg.api.settings) instance;
      serverSocket = cfg.api.settings.spire.server_socket;
      auditLog = cfg.token.settings.audit_log;
    in
    ''
      import base64
      import hashlib

      ${topology.preamble nodes}

      def b64url(data):
          return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

      def sha(value):
          return hashlib.sha256(value.encode()).hexdigest()

      # In-container helpers: an SVID for an audience, an exchange with a given
      # bearer and body (prints only the status), and which secrets the helper
      # put into the environment (names and hashes, never values).
      CONTAINER_LIB = r"""
      svid() { /flashpods/bin/spire-agent api fetch jwt -audience "$1" -socketPath /run/spire/sockets/agent.sock | sed -n 2p | tr -d '[:space:]'; }
      exchange() {
        code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket /run/flashpods/token.sock \
          -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d "$3" http://token/v1/exchange)
        echo "EXCHANGE $1 $code"
      }
      granted() {
        for name in GITHUB_TOKEN ANTHROPIC_API_KEY; do
          value=$(printenv "$name") && echo "GRANTED $name $(printf %s "$value" | sha256sum | cut -d' ' -f1)"
        done
      }
      test -S /run/spire/sockets/agent.sock && test -S /run/flashpods/token.sock && echo SOCKETS-OK
      """

      def results(output, prefix):
          out = {}
          for line in output.splitlines():
              fields = line.split()
              if len(fields) >= 3 and fields[0] == prefix:
                  out[fields[1]] = fields[2]
          return out

      start_all()
      wait_for_host()
      host.wait_for_unit("flashpods-spire-server.service")
      host.wait_for_unit("flashpods-spire-agent.service")
      host.wait_until_succeeds("spire-agent healthcheck -socketPath ${agentSocket}", timeout=120)

      with subtest("the agent attested with the join token and carries the host alias"):
          host.succeed("spire-server entry show -socketPath ${serverSocket} -spiffeID spiffe://${cfg.spire.trustDomain}/agent/host | grep -q 'Entry ID'")

      with subtest("the agent runs the flashpods plugin from its package, with CAP_SYS_PTRACE"):
          host.succeed("journalctl -u flashpods-spire-agent -o cat | grep 'Plugin loaded' | grep -q 'plugin_name=flashpods'")
          agent_pid = host.succeed("systemctl show -p MainPID --value flashpods-spire-agent").strip()
          plugin_pid = host.succeed(f"pgrep -P {agent_pid} -f flashpods-spire-attestor").split()[0]
          assert host.succeed(f"readlink /proc/{plugin_pid}/exe").strip() == "${attestor}"
          # Bit 19 of the effective set, and nothing else (ambient, inherited).
          cap_eff = host.succeed(f"awk '/^CapEff/ {{ print $2 }}' /proc/{plugin_pid}/status").strip()
          assert int(cap_eff, 16) == 1 << 19, cap_eff

      with subtest("a running job's entry carries exactly the plugin's three selectors"):
          running = start_job("sleep 20")
          host.wait_until_succeeds(
              f"spire-server entry show -socketPath ${serverSocket} -selector flashpods:job:{running} | grep -q 'Entry ID'",
              timeout=60)
          entry = host.succeed(f"spire-server entry show -socketPath ${serverSocket} -selector flashpods:job:{running}")
          selectors = sorted(line.split(":", 1)[1].strip() for line in entry.splitlines() if line.startswith("Selector"))
          assert selectors == [
              "flashpods:instance:${instance}", f"flashpods:job:{running}", "flashpods:kind:worker",
          ], entry
          assert wait_final(running)["status"] == "succeeded"

      with subtest("V8 V9: a worker reaches both sockets and gets only worker secrets"):
          job, output = run_job(CONTAINER_LIB + """
      granted
      exchange ask-agent-token "$(svid flashpods-token)" '{"tokens":["ANTHROPIC_API_KEY"]}'
      exchange all "$(svid flashpods-token)" '{}'
      """)
          assert job["status"] == "succeeded", (job, output)
          assert "SOCKETS-OK" in output, output
          assert results(output, "GRANTED") == {"GITHUB_TOKEN": sha("${secrets.github}")}, output
          assert results(output, "EXCHANGE") == {"ask-agent-token": "403", "all": "200"}, output

      with subtest("V10: a sub-agent gets the agent secrets"):
          job, output = run_job(CONTAINER_LIB + "granted", kind="sub_agent")
          assert job["status"] == "succeeded", (job, output)
          assert results(output, "GRANTED") == {
              "GITHUB_TOKEN": sha("${secrets.github}"),
              "ANTHROPIC_API_KEY": sha("${secrets.anthropic}"),
          }, output

      with subtest("V11: forged, foreign, wrong-audience and expired SVIDs get 401"):
          far = 4102444800  # 2100-01-01
          forged_none = b64url({"alg": "none", "typ": "JWT"}) + "." + b64url(
              {"sub": "spiffe://${cfg.spire.trustDomain}/job/x/worker", "aud": ["flashpods-token"], "exp": far}) + "."
          forged_hs = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url(
              {"sub": "spiffe://${cfg.spire.trustDomain}/job/x/worker", "aud": ["flashpods-token"], "exp": far}) + ".c2lnbmF0dXJl"
          foreign_payload = b64url({"sub": "spiffe://evil.example/job/x/worker", "aud": ["flashpods-token"], "exp": far})
          job, output = run_job(CONTAINER_LIB + """
      real=$(svid flashpods-token)
      exchange alg-none "$FORGED_NONE" '{}'
      exchange hs256 "$FORGED_HS" '{}'
      exchange foreign-domain "$(echo "$real" | cut -d. -f1).$FOREIGN_PAYLOAD.$(echo "$real" | cut -d. -f3)" '{}'
      exchange wrong-audience "$(svid some-other-service)" '{}'
      exchange no-bearer "" '{}'
      sleep 40
      exchange expired "$real" '{}'
      """, env={"FORGED_NONE": forged_none, "FORGED_HS": forged_hs, "FOREIGN_PAYLOAD": foreign_payload})
          assert results(output, "EXCHANGE") == {
              "alg-none": "401", "hs256": "401", "foreign-domain": "401",
              "wrong-audience": "401", "no-bearer": "401", "expired": "401",
          }, output

      with subtest("V11: a process outside any container gets no identity and no secret"):
          host.fail("spire-agent api fetch jwt -audience flashpods-token -socketPath ${agentSocket}")
          host.fail(as_flashpods("spire-agent api fetch jwt -audience flashpods-token -socketPath ${agentSocket}"))
          code = host.succeed(
              "curl -s -o /dev/null -w '%{http_code}' --unix-socket ${cfg.token.socket} -X POST http://token/v1/exchange")
          assert code == "401", code

      with subtest("V12: a finished job's identity is dead"):
          job, output = run_job(CONTAINER_LIB + "svid flashpods-token > /artifacts/svid")
          assert job["status"] == "succeeded", (job, output)
          svid = host.succeed(f"cat ${cfg.storage.artifacts}/{job['id']}/svid").strip()
          assert svid.count(".") == 2, svid
          code = host.succeed(
              f"curl -s -o /dev/null -w '%{{http_code}}' --unix-socket ${cfg.token.socket}"
              f" -H 'Authorization: Bearer {svid}' -X POST http://token/v1/exchange")
          assert code in ("401", "403"), code
          # Its registration entry is gone too.
          host.fail(f"spire-server entry show -socketPath ${serverSocket} -selector flashpods:job:{job['id']} | grep -q 'Entry ID'")

      with subtest("the audit log names identities and decisions, never values"):
          host.succeed("grep -q 'spiffe://${cfg.spire.trustDomain}/job/' ${auditLog}")

      assert_no_secret_leaked(["${secrets.github}", "${secrets.anthropic}", API_TOKEN])
      host.succeed("grep -rF -- '${secrets.github}' ${builtins.dirOf auditLog}; test $? -eq 1")
    '';
}
