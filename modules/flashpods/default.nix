# services.flashpods: the whole Flashpods host behind one option block.
#
# This file declares the options and the assertions; each concern lives in its
# own file (imports below). Paths, users and JSON keys follow docs/design.md.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.flashpods;
  fpLib = import ./lib.nix { inherit lib; };
  flashpodsPkgs = import ../pkgs { inherit pkgs lib; };
  jsonFormat = pkgs.formats.json { };
  # The API's packaged defaults (flashpods_api/defaults.json): the options
  # below that render an API key take their defaults from it.
  defaults = fpLib.apiDefaults;
  duration = fpLib.secondsToDuration;

  # What the flashpods user's subordinate range may not hold: any user's uid
  # (the firewall would treat that user's sockets as a job's) or another user's
  # subordinate range (two users' containers would share host uids).
  subIdFirst = cfg.podman.subIdStart;
  subIdLast = cfg.podman.subIdStart + cfg.podman.subIdCount - 1;
  inSubIds = id: id >= subIdFirst && id <= subIdLast;
  subIdClashes =
    lib.concatLists (
      lib.mapAttrsToList (
        name: user:
        lib.optional (user.uid != null && inSubIds user.uid) "the uid of user ${name}"
        ++ lib.optional (
          name != "flashpods"
          && lib.any (
            range: range.startUid <= subIdLast && range.startUid + range.count - 1 >= subIdFirst
          ) user.subUidRanges
        ) "the subordinate uids of user ${name}"
      ) config.users.users
    );

  pathOption =
    default: description:
    lib.mkOption {
      type = lib.types.path;
      inherit default description;
    };
in
{
  imports = [
    ./wireguard.nix
    ./firewall.nix
    ./rsyncd.nix
    ./podman.nix
    ./spire.nix
    ./services.nix
    ./storage.nix
  ];

  options.services.flashpods = {
    enable = lib.mkEnableOption "the Flashpods host (API, token service, rsyncd, SPIRE, rootless Podman behind WireGuard)";

    package = {
      api = lib.mkOption {
        type = lib.types.package;
        default = flashpodsPkgs.flashpods-api;
        defaultText = lib.literalExpression "flashpods-api built from services/api";
        description = "The Flashpods API package (provides the WSGI app and `flashpods-reaper`).";
      };
      token = lib.mkOption {
        type = lib.types.package;
        default = flashpodsPkgs.flashpods-token;
        defaultText = lib.literalExpression "flashpods-token built from services/token";
        description = "The token exchange service package.";
      };
      init = lib.mkOption {
        type = lib.types.package;
        default = flashpodsPkgs.flashpods-init;
        defaultText = lib.literalExpression "the static flashpods-init helper from images/helper";
        description = "The static in-container helper, bind-mounted read-only into every job container.";
      };
    };

    wireguard = {
      interface = lib.mkOption {
        type = lib.types.str;
        default = "wg0";
        description = "Name of the WireGuard interface between the host and the laptop.";
      };
      listenPort = lib.mkOption {
        type = lib.types.port;
        default = 51820;
        description = "UDP port WireGuard listens on; the only port open to the internet.";
      };
      hostAddress = lib.mkOption {
        type = lib.types.str;
        default = "10.0.0.1/24";
        description = "The host's address on the tunnel, with prefix length.";
      };
      laptopAddress = lib.mkOption {
        type = lib.types.str;
        default = "10.0.0.2";
        description = "The laptop's tunnel address (no prefix); the only source allowed to reach the API and rsync.";
      };
      laptopPublicKey = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        description = "The laptop's WireGuard public key (`wg pubkey < laptop.key`).";
      };
      privateKeyFile = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/var/lib/flashpods-secrets/wg-host.key";
        description = ''
          Path on the host to the host's WireGuard private key (`wg genkey`),
          readable by root only. Never a store path: the store is world-readable.
        '';
      };
    };

    ssh.openPublicly = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Also open SSH on every interface. By default SSH is reachable over the
        WireGuard interface only. Set this during the first deployment if the
        tunnel is not yet tested, so a mistake cannot lock you out.
      '';
    };

    api = {
      port = lib.mkOption {
        type = lib.types.port;
        default = 8080;
        description = "TCP port of the API, bound to the WireGuard address only.";
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/var/lib/flashpods-secrets/api-token";
        description = ''
          Path on the host to the API bearer token (`openssl rand -hex 32`).
          Delivered to the API with systemd `LoadCredential`; never a store path.
        '';
      };
      workers = lib.mkOption {
        type = lib.types.ints.positive;
        default = 2;
        description = "gunicorn worker processes of the API (each runs many threads).";
      };
      warmPool = lib.mkOption {
        type = lib.types.attrsOf lib.types.ints.unsigned;
        default = defaults.warm_pool;
        example = {
          worker = 2;
          sub_agent = 0;
        };
        description = ''
          Warm containers kept created and started ahead of demand, per job kind
          (`worker`, `sub_agent`); a spawn takes one and hands it its command.
          On by default with one per kind (flashpods_api/defaults.json), so a
          first spawn takes the warm path; each idle one holds about 2 MiB
          (docs/api.md, "Warm pool"). `{ }`: every job starts cold. Rendered as
          the API's `warm_pool`.
        '';
      };
      maxConcurrentJobs = lib.mkOption {
        type = lib.types.ints.positive;
        default = defaults.max_concurrent_jobs;
        description = "Jobs running at once; further jobs queue.";
      };
      queueLimit = lib.mkOption {
        type = lib.types.ints.positive;
        default = defaults.queue_limit;
        description = "Queued jobs accepted before the API answers 429.";
      };
      defaultTimeout = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.default_timeout_s;
        description = "Timeout of a job that does not ask for one.";
      };
      maxTimeout = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.max_timeout_s;
        description = "Largest timeout a job may ask for.";
      };
      images = {
        worker = lib.mkOption {
          type = lib.types.str;
          default = defaults.images.worker;
          description = "Image of `spawn_worker` jobs.";
        };
        subAgent = lib.mkOption {
          type = lib.types.str;
          default = defaults.images.sub_agent;
          description = "Image of `spawn_sub_agent` jobs.";
        };
        allowed = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [
            cfg.api.images.worker
            cfg.api.images.subAgent
          ];
          defaultText = lib.literalExpression "[ cfg.api.images.worker cfg.api.images.subAgent ]";
          description = "Images a job may name; anything else is refused.";
        };
        load = lib.mkOption {
          type = lib.types.listOf lib.types.package;
          default = [
            flashpodsPkgs.worker-image
            flashpodsPkgs.agent-image
          ];
          defaultText = lib.literalExpression "[ worker-image agent-image ] of this flake";
          description = ''
            Image archives (`dockerTools` outputs) loaded into the `flashpods`
            user's Podman store at boot, so the host needs no registry.
          '';
        };
      };
      settings = lib.mkOption {
        type = lib.types.submodule { freeformType = jsonFormat.type; };
        default = { };
        example = {
          limits.log_bytes = 16777216;
          reaper.interval_s = 5;
        };
        description = ''
          Extra keys of the API configuration JSON (`FLASHPODS_API_CONFIG`,
          docs/design.md), merged over what the options above generate.
          Never put secrets here: the file is in the world-readable store.
        '';
      };
    };

    token = {
      socket = lib.mkOption {
        type = lib.types.str;
        default = "/run/flashpods/token/token.sock";
        description = ''
          Unix socket of the token service; there is no TCP listener. Its
          directory is bind-mounted (read-only) into every job container, so
          that a restart of the service (a new socket renamed into place) reaches
          running and warm containers: it must be named `token.sock` and sit in
          a directory of its own, never the Podman socket's or a parent of it.
        '';
      };
      policy = lib.mkOption {
        type = lib.types.submodule {
          options = {
            worker = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              description = "Secret names a worker job may receive.";
            };
            subAgent = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              description = "Secret names a sub-agent job may receive (the token service's role `sub_agent`).";
            };
            # The old name: set, it fails an assertion that names subAgent.
            agent = lib.mkOption {
              type = lib.types.nullOr (lib.types.listOf lib.types.str);
              default = null;
              visible = false;
              description = "Renamed to subAgent.";
            };
          };
        };
        default = { };
        example = {
          worker = [ "GITHUB_TOKEN" ];
          subAgent = [
            "ANTHROPIC_API_KEY"
            "GITHUB_TOKEN"
          ];
        };
        description = "Which secrets each role receives from the token service.";
      };
      secrets = lib.mkOption {
        type = lib.types.attrsOf lib.types.str;
        default = { };
        example = {
          ANTHROPIC_API_KEY = "/var/lib/flashpods-secrets/anthropic";
        };
        description = ''
          Secret name -> path of a file on the host holding its value. Each
          needs a host rule (`proxy.rules`: the credential proxy injects it, a
          job holds a placeholder) or an entry in `token.envDelivery`. Passed
          with `LoadCredential` to the one unit that reads it (the proxy for a
          ruled secret, the token service for an env-delivered one); values
          never enter the Nix store.
        '';
      };
      envDelivery = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        example = [ "NPM_TOKEN" ];
        description = ''
          Secrets handed to jobs as their real value in the environment, the
          old and weaker way (docs/token.md): a job can send such a value
          anywhere. Only for secrets the proxy cannot inject (no HTTP header
          towards known hosts), or with the proxy off (spire mode). Rendered
          as the token config's `env_delivery`.
        '';
      };
      settings = lib.mkOption {
        type = lib.types.submodule { freeformType = jsonFormat.type; };
        default = { };
        description = "Extra keys of the token service configuration JSON (`FLASHPODS_TOKEN_CONFIG`).";
      };
    };

    proxy = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = ''
          Run the credential proxy (`flashpods-proxy`, docs/design.md
          "Credential proxy"): jobs hold placeholders and the proxy, on the host,
          puts a secret into requests to that secret's own hosts only. Its socket
          `proxy.sock` sits beside `token.sock`, in the directory every job
          already mounts. With `spire.enable` it attests each connection by
          the job's JWT-SVID (audience `flashpods-proxy`, which the in-container
          relay adds), checked against the bundle the token service reads too.
        '';
      };
      rules = lib.mkOption {
        type = lib.types.attrsOf (lib.types.nonEmptyListOf lib.types.str);
        default = { };
        example = {
          ANTHROPIC_API_KEY = [ "api.anthropic.com" ];
          GITHUB_TOKEN = [
            "github.com"
            "api.github.com"
            "codeload.github.com"
          ];
        };
        description = ''
          Secret name -> the host names it is injected towards (exact names,
          no wildcards). A secret of `token.secrets` with a rule is never put
          in a job's environment; the job gets a placeholder that works only
          through the proxy, only from that job, only while it runs.
        '';
      };
      budgetTokens = lib.mkOption {
        type = lib.types.nullOr lib.types.ints.positive;
        default = null;
        example = 2000000;
        description = ''
          Per-job cap on model tokens (input + output) through the proxy; each
          request's `max_tokens` is clamped to what remains and a job at the cap
          gets `budget_exhausted`. null: no cap (usage is still recorded and
          shown with each job).
        '';
      };
      githubScope = lib.mkOption {
        type = lib.types.nullOr (
          lib.types.submodule {
            options = {
              secret = lib.mkOption {
                type = lib.types.str;
                default = "GITHUB_TOKEN";
                description = "The secret (with a rule in `proxy.rules`) the scope applies to.";
              };
              pushBranches = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ "flashpods/{job_id}/*" ];
                description = ''
                  Branches a job may push to (`*` matches across `/`, `{job_id}` is
                  the attested job); deletes, tags and any other ref refuse the push.
                '';
              };
              apiWrite = lib.mkOption {
                type = lib.types.bool;
                default = false;
                description = "Allow REST writes and GraphQL mutations (reads always pass).";
              };
            };
          }
        );
        default = null;
        example = {
          pushBranches = [ "flashpods/{job_id}/*" ];
        };
        description = ''
          Optional limits on what a job may do with the GitHub token through the
          proxy, whatever the token itself allows (docs/token.md, "GitHub
          scoping", says what it can and cannot enforce). null: no limits.
        '';
      };
      upstreamCaFile = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        description = ''
          CA bundle the proxy verifies upstream servers against. null: the
          system store (nixpkgs' OpenSSL reads
          /etc/ssl/certs/ca-certificates.crt, from `security.pki`).
        '';
      };
      ca = {
        keyFile = lib.mkOption {
          type = lib.types.str;
          default = "/var/lib/flashpods/proxy-ca/ca-key.pem";
          description = ''
            Private key of this host's proxy CA (PEM, EC P-256), which signs the
            certificates the proxy shows jobs for intercepted hosts. Read by
            systemd only and handed to the proxy as the credential `ca-key.pem`
            (`LoadCredential`, or `LoadCredentialEncrypted` with `ca.encrypted`).
            Never a store path; never shared with another host.
          '';
        };
        certFile = lib.mkOption {
          type = lib.types.str;
          default = "/var/lib/flashpods/proxy-ca/ca.pem";
          description = "The CA's certificate (public; jobs fetch it from the proxy), the credential `ca.pem`.";
        };
        generate = lib.mkOption {
          type = lib.types.bool;
          default = true;
          description = ''
            At boot, `flashpods-proxy-ca.service` (root, one-shot) makes what is
            missing: a key (0600) when `keyFile` does not exist, a certificate
            for the key when `certFile` does not. It never replaces a file, so
            the CA jobs trust stays across boots. Their directories are made
            root-only (0700). False: supply both files yourself (docs/nixos.md).
          '';
        };
        encrypted = lib.mkOption {
          type = lib.types.bool;
          default = false;
          description = ''
            `keyFile` is a `systemd-creds encrypt --name=ca-key.pem` blob, loaded
            with `LoadCredentialEncrypted` (bound to this host's TPM or
            /var/lib/systemd/credential.secret). Needs `ca.generate = false`.
          '';
        };
      };
    };

    spire = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          Attest job containers with SPIRE instead of the token service's
          kernel `peer` attestation (the default, which needs no SPIRE). The
          agent identifies jobs with the `flashpods` workload attestor plugin
          (`package.spireAttestor`), which works with SPIRE 1.13 and later,
          so with nixos-25.11's `pkgs.spire`.
        '';
      };
      package = lib.mkPackageOption pkgs "spire" { };
      trustDomain = lib.mkOption {
        type = lib.types.str;
        default = defaults.spire.trust_domain;
        description = "SPIFFE trust domain of job identities.";
      };
      jwtSvidTtl = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.spire.jwt_svid_ttl_s;
        description = "Lifetime of the JWT-SVIDs job containers present to the token service.";
      };
      serverPort = lib.mkOption {
        type = lib.types.port;
        default = 8081;
        description = "TCP port of the SPIRE server, bound to loopback for the one local agent.";
      };
    };

    retention = {
      artifacts = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.retention.artifacts_s;
        description = "How long artifacts of a finished job are kept.";
      };
      logs = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.retention.logs_s;
        description = "How long logs of a finished job are kept.";
      };
      uploads = lib.mkOption {
        type = fpLib.durationType;
        default = duration defaults.retention.uploads_s;
        description = "How long an unused upload (or kept upload base) is kept.";
      };
    };

    storage = {
      uploads = pathOption "/tmp/flashpods/uploads" "Root of the rsync `uploads` module.";
      artifacts = pathOption "/var/lib/flashpods/artifacts" "Per-job artifact directories.";
      workspaces = pathOption "/var/lib/flashpods/workspaces" "Per-job workspaces mounted at /workspace.";
      db = pathOption "/var/lib/flashpods/db" "Directory of the job database (flashpods.db).";
      logs = pathOption "/var/log/flashpods" "Per-job logs.";
      usage = pathOption "/var/lib/flashpods/usage" ''
        Per-job model usage the credential proxy records (`<job id>.json`,
        written by flashpods-token, read by the API through group flashpods).
      '';
      control = pathOption "/var/lib/flashpods/control" ''
        Per-job hand-over directories of warm containers (mounted read-only at
        /flashpods/control). Its parent directory must not be writable by group
        flashpods, so a job cannot swap the directory out.
      '';
      budgets = pathOption "/var/lib/flashpods/budgets" ''
        Per-job model budgets: the API writes `<job id>.json` before a job starts,
        the credential proxy reads it (group flashpods-token); no job can read or
        write it. Used once the proxy is on (API `storage.budgets`, proxy
        `budget_dir`).
      '';
    };

    rsync.port = lib.mkOption {
      type = lib.types.port;
      default = 873;
      description = "TCP port of the rsync daemon, bound to the WireGuard address only.";
    };

    podman.uid = lib.mkOption {
      type = lib.types.int;
      default = 1001;
      description = ''
        Fixed uid of the `flashpods` user. The firewall matches job traffic by
        socket owner, and the Podman socket unit needs `/run/user/<uid>`; both
        want the number at evaluation time.
      '';
    };

    podman.subIdStart = lib.mkOption {
      type = lib.types.ints.positive;
      # 0x70000000: above systemd-nspawn's range and far from the 100000 + k * 65536
      # blocks NixOS's automatic allocator hands out (it does not avoid explicit ranges).
      default = 1879048192;
      description = ''
        First subordinate uid and gid of the `flashpods` user (its
        `/etc/subuid` and `/etc/subgid` range). The range is explicit, not
        `autoSubUidGidRange`, because the firewall must name it at evaluation
        time: a container started with `--user 1` (or `--network host`) owns
        sockets with a uid from this range, and the job rules hold it like the
        job uid itself. Changing it on an existing host needs `podman system
        reset` as `flashpods` (its storage was made under the old range).
      '';
    };

    podman.subIdCount = lib.mkOption {
      type = lib.types.ints.positive;
      default = 65536;
      description = "Number of subordinate uids and gids of the `flashpods` user (from `podman.subIdStart`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion =
          baseNameOf cfg.token.socket == "token.sock"
          && !lib.hasPrefix "${dirOf cfg.token.socket}/" "${dirOf cfg.podman.socket}/";
        message = "services.flashpods.token.socket (${cfg.token.socket}) must be named token.sock and sit in a directory of its own: jobs mount its directory, which must never hold or lead to the Podman socket (${cfg.podman.socket}). Use e.g. /run/flashpods/token/token.sock.";
      }
      {
        assertion = subIdClashes == [ ];
        message = "services.flashpods.podman.subIdStart/subIdCount (${toString cfg.podman.subIdStart}, ${toString cfg.podman.subIdCount}) overlap ${lib.concatStringsSep ", " subIdClashes}: choose a range that holds no uid of any user and no other user's subordinate range (the firewall treats every uid in it as a job).";
      }
      {
        assertion = cfg.wireguard.laptopPublicKey != null;
        message = "services.flashpods.wireguard.laptopPublicKey must be set to the laptop's WireGuard public key (`wg pubkey < laptop.key`; see docs/nixos.md).";
      }
      {
        assertion = cfg.wireguard.privateKeyFile != null;
        message = "services.flashpods.wireguard.privateKeyFile must be set to a root-only file holding the host's WireGuard private key (`wg genkey`; see docs/nixos.md).";
      }
      {
        assertion = cfg.api.tokenFile != null;
        message = "services.flashpods.api.tokenFile must be set to a root-only file holding the API bearer token (`openssl rand -hex 32`; see docs/nixos.md).";
      }
      {
        assertion = builtins.all (p: !(lib.hasPrefix builtins.storeDir (toString p))) (
          lib.filter (p: p != null) [
            cfg.wireguard.privateKeyFile
            cfg.api.tokenFile
            cfg.proxy.ca.keyFile
          ]
          ++ builtins.attrValues cfg.token.secrets
        );
        message = "services.flashpods: privateKeyFile, api.tokenFile, proxy.ca.keyFile and token.secrets must be paths on the host outside ${builtins.storeDir}; the Nix store is world-readable.";
      }
      {
        assertion = builtins.match "[0-9.]+/[0-9]+" cfg.wireguard.hostAddress != null;
        message = "services.flashpods.wireguard.hostAddress must be an IPv4 address with prefix length, e.g. \"10.0.0.1/24\".";
      }
      {
        assertion = builtins.match "[0-9.]+" cfg.wireguard.laptopAddress != null;
        message = "services.flashpods.wireguard.laptopAddress must be a bare IPv4 address without prefix, e.g. \"10.0.0.2\".";
      }
      (
        let
          granted = lib.unique (cfg.token.policy.worker ++ cfg.token.policy.subAgent);
          missing = lib.filter (name: !(cfg.token.secrets ? ${name})) granted;
        in
        {
          assertion = missing == [ ];
          message = "services.flashpods.token.policy grants ${lib.concatStringsSep ", " missing} but services.flashpods.token.secrets has no file for ${
            if builtins.length missing == 1 then "it" else "them"
          }; add services.flashpods.token.secrets.<NAME> = \"/path/to/file\".";
        }
      )
      # Every secret has a host rule or an explicit opt-in to environment
      # delivery: the same check the token service makes at load
      # (flashpods_token/proxy_config.py), here at evaluation.
      (
        let
          ruled = builtins.attrNames cfg.proxy.rules;
          unruled = lib.filter (
            name: !(lib.elem name ruled) && !(lib.elem name cfg.token.envDelivery)
          ) (builtins.attrNames cfg.token.secrets);
          first = lib.head (unruled ++ [ "<NAME>" ]);
        in
        {
          assertion = unruled == [ ];
          message = "services.flashpods.token.secrets.${first} has no host rule and is not opted into environment delivery: give it the hosts it is for (services.flashpods.proxy.rules.${first} = [ \"api.example.com\" ];, the proxy injects it and the job holds a placeholder), or list it in services.flashpods.token.envDelivery to hand the real value to jobs (weaker: a job can send it anywhere; docs/token.md).";
        }
      )
      (
        let
          named = builtins.attrNames cfg.proxy.rules ++ cfg.token.envDelivery;
          unknown = lib.filter (name: !(cfg.token.secrets ? ${name})) named;
        in
        {
          assertion = unknown == [ ];
          message = "services.flashpods.proxy.rules / token.envDelivery name ${lib.concatStringsSep ", " unknown}, which services.flashpods.token.secrets has no file for; add services.flashpods.token.secrets.<NAME> = \"/path/to/file\" or remove the name.";
        }
      )
      (
        let
          both = lib.filter (name: cfg.proxy.rules ? ${name}) cfg.token.envDelivery;
        in
        {
          assertion = both == [ ];
          message = "services.flashpods: ${lib.concatStringsSep ", " both} is in both proxy.rules and token.envDelivery; pick one (the rule keeps the value out of jobs).";
        }
      )
      {
        assertion = cfg.proxy.enable || cfg.proxy.rules == { };
        message = "services.flashpods.proxy.rules is set but services.flashpods.proxy.enable is false: nothing would inject those secrets. Enable the proxy, or move the secrets to services.flashpods.token.envDelivery (weaker).";
      }
      (
        let
          caDirs = lib.unique [
            (dirOf cfg.proxy.ca.keyFile)
            (dirOf cfg.proxy.ca.certFile)
          ];
          managed = map toString (
            builtins.attrValues cfg.storage
            ++ [
              (dirOf cfg.token.socket)
              (dirOf cfg.podman.socket)
            ]
          );
          # Equal, above or below: made root-only 0700 it would lock the
          # services out, or sit where group flashpods (jobs) can rename it.
          related = a: b: a == b || lib.hasPrefix "${a}/" "${b}/" || lib.hasPrefix "${b}/" "${a}/";
          clashes = lib.filter (m: lib.any (d: related d m) caDirs) managed;
        in
        {
          assertion = !(cfg.proxy.enable && cfg.proxy.ca.generate) || clashes == [ ];
          message = "services.flashpods.proxy.ca.keyFile and certFile must sit in a directory of their own (made root-only at boot), not in, at or above ${lib.concatStringsSep ", " clashes}; use e.g. /var/lib/flashpods/proxy-ca/ca-key.pem.";
        }
      )
      {
        assertion = !(cfg.proxy.ca.encrypted && cfg.proxy.ca.generate);
        message = "services.flashpods.proxy.ca.encrypted needs services.flashpods.proxy.ca.generate = false: the one-shot writes a plain key; encrypt one yourself with `systemd-creds encrypt --name=ca-key.pem` (docs/nixos.md).";
      }
      {
        assertion = builtins.all (name: builtins.match "[A-Za-z_][A-Za-z0-9_]*" name != null) (
          builtins.attrNames cfg.token.secrets
        );
        message = "services.flashpods.token.secrets: names must be environment variable names ([A-Za-z_][A-Za-z0-9_]*); they become variables inside the job.";
      }
      {
        assertion = lib.elem cfg.api.images.worker cfg.api.images.allowed && lib.elem cfg.api.images.subAgent cfg.api.images.allowed;
        message = "services.flashpods.api.images.allowed must contain api.images.worker and api.images.subAgent.";
      }
      {
        assertion = lib.all (kind: kind == "worker" || kind == "sub_agent") (
          builtins.attrNames cfg.api.warmPool
        );
        message = "services.flashpods.api.warmPool: keys must be job kinds, worker or sub_agent (the sub-agent kind is spelled sub_agent, not agent, subagent or sub-agent).";
      }
      {
        assertion = cfg.token.policy.agent == null;
        message = "services.flashpods.token.policy.agent was renamed: write services.flashpods.token.policy.subAgent (the token service's role sub_agent).";
      }
      {
        assertion =
          let
            parent = builtins.dirOf (toString cfg.storage.control);
            groupWritable = with cfg.storage; [
              uploads
              workspaces
              artifacts
              logs
            ];
          in
          !(builtins.elem parent (map toString groupWritable));
        message = "services.flashpods.storage.control must not lie directly inside uploads, workspaces, artifacts or logs: those are writable by group flashpods, which could then replace the control directory. Use e.g. \"/var/lib/flashpods/control\".";
      }
      {
        assertion = cfg.api.port != cfg.rsync.port;
        message = "services.flashpods.api.port and services.flashpods.rsync.port must differ.";
      }
    ];
  };
}
