/* flashpods-init: the entrypoint wrapper of every Flashpods job container.
 *
 * It is mounted read-only at /flashpods/bin/flashpods-init into images it
 * knows nothing about (busybox, Debian, third-party), so it is one static
 * binary that needs no shell, no NSS and no files from the image. What it
 * does is the container contract in docs/design.md:
 *   1. copy the upload (/flashpods/input) into /workspace once;
 *   2. umask 0002, mkdir -p $HOME;
 *   3. exchange its identity for the job's secrets at the token service;
 *   4. exec the job's command with those secrets in its environment.
 * `--wait-command` (warm containers) first waits for the command the API
 * hands over in /flashpods/control (handover.h), then does the same.
 * `--normalize DIR...` is a separate mode used by the reaper. See README.md. */
/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "copyin.h"
#include "exchange.h"
#include "handover.h"
#include "normalize.h"
#include "relay.h"
#include "secrets.h"
#include "svid.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef FLASHPODS_SRC_HASH
#define FLASHPODS_SRC_HASH "unknown"
#endif
#define VERSION "1"

#define DEFAULT_INPUT "/flashpods/input"
#define DEFAULT_WORKSPACE "/workspace"
#define DEFAULT_TOKEN_SOCKET "/run/flashpods/token.sock"

static const char usage[] =
    "usage: flashpods-init [--] COMMAND [ARG...]\n"
    "       flashpods-init --wait-command\n"
    "       flashpods-init --normalize DIR...\n"
    "       flashpods-init --version | --help\n"
    "\n"
    "Runs COMMAND as a Flashpods job: copies /flashpods/input into /workspace once,\n"
    "sets umask 0002, creates $HOME, fetches the job's secrets from the token service\n"
    "($FLASHPODS_TOKEN_SOCKET) into the environment, then executes COMMAND.\n"
    "--wait-command (a warm container) waits for $FLASHPODS_CONTROL_DIR/command\n"
    "(default /flashpods/control; at most FLASHPODS_WAIT_S seconds, 0 = forever),\n"
    "takes COMMAND and extra environment from it, then does the same.\n"
    "--normalize runs chmod u+rwX,g+rwX on every file and directory under each DIR\n"
    "without following symlinks.\n"
    "\n"
    "Environment: FLASHPODS_TOKEN_SOCKET, FLASHPODS_ATTESTATION (peer|spire),\n"
    "SPIFFE_ENDPOINT_SOCKET, FLASHPODS_SVID_WAIT_S (30), FLASHPODS_SPIRE_AGENT,\n"
    "FLASHPODS_SECRETS (required|optional), FLASHPODS_TOKEN_TIMEOUT_S (10),\n"
    "FLASHPODS_TOKEN_BUSY_WAIT_S (30),\n"
    "FLASHPODS_INPUT_DIR, FLASHPODS_WORKSPACE_DIR, HOME.\n"
    "Exit status: the command's own; 125 when flashpods-init failed (one line on\n"
    "stderr says why); 126 command not executable; 127 command not found.\n";

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* Opens /dev/null on any of fds 0-2 that is closed, so no socket or pipe
 * the helper opens can land there and leak into the command as its stdout. */
static void guard_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
            continue;
        int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (n >= 0 && n != fd) {
            dup2(n, fd);
            close(n);
        }
    }
}

/* Copy-in and --normalize hold one or two descriptors per directory level:
 * they may use all the descriptors the container allows, not just the soft
 * limit. The command gets the limit it was started with back. */
static struct rlimit original_nofile;
static int nofile_raised;

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        original_nofile = rl;
        rl.rlim_cur = rl.rlim_max;
        nofile_raised = setrlimit(RLIMIT_NOFILE, &rl) == 0;
    }
}

static void restore_fd_limit(void)
{
    if (nofile_raised)
        (void)setrlimit(RLIMIT_NOFILE, &original_nofile);
}

static int step_copyin(void)
{
    const char *src = env_or("FLASHPODS_INPUT_DIR", DEFAULT_INPUT);
    const char *dst = env_or("FLASHPODS_WORKSPACE_DIR", DEFAULT_WORKSPACE);
    struct copy_stats st;
    struct err e;
    int copied;
    if (copyin_run(src, dst, &copied, &st, &e) < 0) {
        say("%s", e.msg);
        return -1;
    }
    if (copied && st.skipped)
        say("copy-in skipped %ld special file(s) (devices, FIFOs, sockets), first: %.200s",
            st.skipped, st.first_skipped);
    return 0;
}

/* mkdir -p: creates every missing component with mode 0777 & ~umask. */
static int mkdir_p(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0777) < 0 && errno != EEXIST)
        return -1;
    struct stat sb;
    if (stat(path, &sb) < 0)
        return -1;
    if (!S_ISDIR(sb.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static void step_home(void)
{
    umask(0002);
    const char *home = getenv("HOME");
    /* A HOME that cannot be created is not fatal: many commands never use
     * it, and the one that does will say so itself. */
    if (home && *home == '/' && mkdir_p(home) < 0)
        say("warning: cannot create HOME=%.300s: %s", home, strerror(errno));
}

/* Returns 0 with the secrets set, or -1 with e filled. *skipped is set when
 * there is no token service to ask (helper run outside Flashpods). */
static int exchange(int *count, int *skipped, struct err *e)
{
    *count = 0;
    *skipped = 0;
    const char *configured = getenv("FLASHPODS_TOKEN_SOCKET");
    const char *sock = configured && *configured ? configured : DEFAULT_TOKEN_SOCKET;
    struct stat sb;
    if (!(configured && *configured) && stat(sock, &sb) < 0 && errno == ENOENT) {
        *skipped = 1;
        return 0;
    }

    long timeout_s, wait_s, busy_wait_s;
    if (env_seconds("FLASHPODS_TOKEN_TIMEOUT_S", 10, 3600, &timeout_s, e) < 0)
        return -1;
    /* A busy service (many jobs starting, or one job hogging connections until the
     * service's per-connection deadline cuts them) clears within seconds. */
    if (env_seconds("FLASHPODS_TOKEN_BUSY_WAIT_S", 30, 3600, &busy_wait_s, e) < 0)
        return -1;
    if (timeout_s == 0) {
        err_set(e, "FLASHPODS_TOKEN_TIMEOUT_S must be at least 1 second; fix or unset it");
        return -1;
    }
    const char *mode = env_or("FLASHPODS_ATTESTATION", "peer");
    struct buf jwt = {0};
    if (!strcmp(mode, "spire")) {
        if (env_seconds("FLASHPODS_SVID_WAIT_S", 30, 86400, &wait_s, e) < 0)
            return -1;
        /* The Workload API address is a URI (unix:///path or unix:/path);
         * the CLI's -socketPath wants the bare path. */
        const char *endpoint =
            svid_endpoint_path(env_or("SPIFFE_ENDPOINT_SOCKET", SVID_DEFAULT_ENDPOINT));
        if (!endpoint) {
            err_set(e, "SPIFFE_ENDPOINT_SOCKET must be unix:///<absolute path>; got %.200s",
                    getenv("SPIFFE_ENDPOINT_SOCKET"));
            return -1;
        }
        const char *agent = env_or("FLASHPODS_SPIRE_AGENT", SVID_DEFAULT_AGENT);
        if (svid_fetch(agent, endpoint, SVID_TOKEN_AUDIENCE, wait_s, &jwt, e) < 0)
            return -1;
    } else if (strcmp(mode, "peer") != 0) {
        err_set(e, "FLASHPODS_ATTESTATION must be 'peer' or 'spire'; got %.40s", mode);
        return -1;
    }

    struct buf body = {0};
    int rc = exchange_fetch(sock, jwt.data, timeout_s, busy_wait_s, &body, e);
    buf_wipe(&jwt);
    if (rc == 0)
        rc = secrets_apply(body.data ? body.data : "", body.len, count, e);
    buf_wipe(&body);
    return rc;
}

static int step_exchange(void)
{
    const char *policy = env_or("FLASHPODS_SECRETS", "required");
    int optional = !strcmp(policy, "optional");
    if (!optional && strcmp(policy, "required") != 0) {
        say("FLASHPODS_SECRETS must be 'required' or 'optional'; got %.40s", policy);
        return -1;
    }
    int count, skipped;
    struct err e;
    if (exchange(&count, &skipped, &e) == 0)
        return 0;
    if (optional) {
        say("warning: %s; continuing without secrets (FLASHPODS_SECRETS=optional)", e.msg);
        return 0;
    }
    say("%s", e.msg);
    return -1;
}

static int run_normalize(int argc, char **argv)
{
    if (argc < 1) {
        say("--normalize needs at least one directory");
        return EXIT_HELPER_FAILED;
    }
    int bad = 0;
    for (int i = 0; i < argc; i++) {
        struct stat sb;
        if (lstat(argv[i], &sb) < 0) {
            say("normalize: cannot stat %.400s: %s", argv[i], strerror(errno));
            bad = 1;
            continue;
        }
        if (S_ISLNK(sb.st_mode)) {
            say("normalize: %.400s is a symlink; not followed", argv[i]);
            bad = 1;
            continue;
        }
        struct normalize_stats st = {0};
        normalize_tree(argv[i], &st);
        char line[600];
        int n = snprintf(line, sizeof line,
                         "flashpods-init: normalized %.400s: %ld entries, %ld changed, %ld failed\n",
                         argv[i], st.seen, st.changed, st.failed);
        (void)write_all(STDOUT_FILENO, line, (size_t)n);
        if (st.failed)
            bad = 1;
    }
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    guard_std_fds();
    if (argc >= 2 && !strcmp(argv[1], "--help")) {
        (void)write_all(STDOUT_FILENO, usage, sizeof usage - 1);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        static const char v[] = "flashpods-init " VERSION " source-sha256 " FLASHPODS_SRC_HASH "\n";
        (void)write_all(STDOUT_FILENO, v, sizeof v - 1);
        return 0;
    }
    raise_fd_limit();
    if (argc >= 2 && !strcmp(argv[1], "--normalize"))
        return run_normalize(argc - 2, argv + 2);

    int first = 1;
    if (argc == 2 && !strcmp(argv[1], "--wait-command")) {
        /* Nothing else happens before the hand-over: no copy-in, and above all
         * no token exchange, so an unclaimed warm container never asks for
         * secrets (the token service refuses it anyway). */
        long wait_s;
        struct err e;
        char **handed;
        if (env_seconds("FLASHPODS_WAIT_S", 0, 31536000, &wait_s, &e) < 0 ||
            handover_wait(env_or("FLASHPODS_CONTROL_DIR", "/flashpods/control"), wait_s, &handed,
                          &e) < 0) {
            say("%s", e.msg);
            return EXIT_HELPER_FAILED;
        }
        argv = handed;
        argc = 0;
        while (handed[argc])
            argc++;
        first = 0;
    } else if (argc >= 2 && !strcmp(argv[1], "--"))
        first = 2;
    else if (argc >= 2 && argv[1][0] == '-') {
        say("unknown option %.100s; usage: flashpods-init [--] COMMAND [ARG...] (see --help)",
            argv[1]);
        return EXIT_HELPER_FAILED;
    }
    if (first >= argc) {
        say("no command given; usage: flashpods-init [--] COMMAND [ARG...]");
        return EXIT_HELPER_FAILED;
    }

    if (step_copyin() < 0)
        return EXIT_HELPER_FAILED;
    step_home();
    if (step_exchange() < 0)
        return EXIT_HELPER_FAILED;
    struct err relay_err;
    if (relay_start(&relay_err) < 0) {
        say("%s", relay_err.msg);
        return EXIT_HELPER_FAILED;
    }

    restore_fd_limit();
    execvp(argv[first], argv + first);
    int saved = errno;
    if (saved == ENOENT || saved == ENOTDIR) {
        say("cannot run %.300s: command not found (PATH=%.300s)", argv[first],
            env_or("PATH", "(unset)"));
        return EXIT_NOT_FOUND;
    }
    say("cannot run %.300s: %s", argv[first], strerror(saved));
    return EXIT_NOT_EXECUTABLE;
}
