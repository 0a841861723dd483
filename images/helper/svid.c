/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "svid.h"

#include "base64.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* One CLI run may not take longer than this (the CLI's own -timeout defaults
 * to 5 s in current SPIRE releases). */
#define ATTEMPT_LIMIT_MS 15000
#define MAX_OUTPUT (256 * 1024)
#define MAX_JWT 16384

static int jwt_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

int svid_parse_output(const char *out, size_t len, struct buf *jwt)
{
    const char *p = out, *end = out + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if (eol - p > 7 && memcmp(p, "token(", 6) == 0 && eol[-1] == ':' && eol < end) {
            const char *t = eol + 1;
            const char *te = memchr(t, '\n', (size_t)(end - t));
            if (!te)
                te = end;
            while (t < te && (*t == '\t' || *t == ' '))
                t++;
            while (te > t && (te[-1] == '\r' || te[-1] == ' '))
                te--;
            size_t n = (size_t)(te - t);
            if (n == 0 || n > MAX_JWT)
                return -1;
            /* A JWS in compact form: three base64url parts joined by dots.
             * Anything else would end up in an HTTP header: refuse it. */
            int dots = 0;
            for (size_t i = 0; i < n; i++) {
                if (!jwt_char((unsigned char)t[i]))
                    return -1;
                dots += t[i] == '.';
            }
            if (dots != 2)
                return -1;
            return buf_append(jwt, t, n);
        }
        p = eol + 1;
    }
    return -1;
}

/* Runs the CLI once; its stdout goes to out, the last line of its stderr to
 * why. Returns the exit status, or -1 when it could not be run or was killed
 * for taking too long (why says which). */
static int run_once(const char *agent, char *const argv[], struct buf *out, char *why,
                    size_t whylen)
{
    int op[2], ep[2], saved;
    if (pipe2(op, O_CLOEXEC) < 0) {
        saved = errno;
        goto fail_errno;
    }
    if (pipe2(ep, O_CLOEXEC) < 0) {
        saved = errno;
        close(op[0]);
        close(op[1]);
        goto fail_errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        saved = errno;
        close(op[0]);
        close(op[1]);
        close(ep[0]);
        close(ep[1]);
        goto fail_errno;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(op[1], STDOUT_FILENO);
        dup2(ep[1], STDERR_FILENO);
        execv(agent, argv);
        static const char msg[] = "cannot execute the spire-agent binary\n";
        (void)write_all(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(127);
    }
    close(op[1]);
    close(ep[1]);

    struct buf err = {0};
    long long deadline = now_ms() + ATTEMPT_LIMIT_MS;
    int timed_out = 0, too_big = 0;
    struct pollfd fds[2] = {{.fd = op[0], .events = POLLIN}, {.fd = ep[0], .events = POLLIN}};
    int open_fds = 2;
    char chunk[8192];
    while (open_fds > 0) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int r = poll(fds, 2, (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read_retry(fds[i].fd, chunk, sizeof chunk);
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            struct buf *dst = i == 0 ? out : &err;
            if (dst->len + (size_t)n > MAX_OUTPUT) {
                too_big = 1;
                continue;
            }
            if (buf_append(dst, chunk, (size_t)n) != 0)
                too_big = 1;
        }
    }
    explicit_bzero(chunk, sizeof chunk);
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    if (timed_out)
        kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }

    /* Keep the last non-empty stderr line: the CLI prints its error there. */
    why[0] = '\0';
    if (err.len) {
        size_t e = err.len;
        while (e > 0 && (err.data[e - 1] == '\n' || err.data[e - 1] == '\r'))
            e--;
        size_t s = e;
        while (s > 0 && err.data[s - 1] != '\n')
            s--;
        sanitize(why, whylen, err.data + s, e - s);
    }
    buf_wipe(&err);
    if (timed_out) {
        snprintf(why, whylen, "spire-agent did not finish within %d s", ATTEMPT_LIMIT_MS / 1000);
        return -1;
    }
    if (too_big) {
        snprintf(why, whylen, "spire-agent printed more than %d bytes", MAX_OUTPUT);
        return -1;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    snprintf(why, whylen, "spire-agent was killed by signal %d", WTERMSIG(st));
    return -1;

fail_errno:
    snprintf(why, whylen, "cannot start spire-agent: %s", strerror(saved));
    return -1;
}

int svid_fetch(const char *agent, const char *socket, const char *audience, long wait_s,
               struct buf *jwt, struct err *e)
{
    if (access(agent, X_OK) != 0) {
        err_set(e,
                "cannot run the SPIRE agent CLI at %.200s (%s); mount spire-agent read-only "
                "there or set FLASHPODS_SPIRE_AGENT",
                agent, strerror(errno));
        return -1;
    }
    char *const argv[] = {(char *)"spire-agent", (char *)"api",       (char *)"fetch",
                          (char *)"jwt",         (char *)"-audience", (char *)audience,
                          (char *)"-socketPath", (char *)socket,      NULL};
    long long deadline = now_ms() + wait_s * 1000;
    long long pause = 250;
    int attempts = 0;
    char why[256] = "";
    for (;;) {
        struct buf out = {0};
        attempts++;
        int rc = run_once(agent, argv, &out, why, sizeof why);
        if (rc == 0) {
            int parsed = svid_parse_output(out.data ? out.data : "", out.len, jwt);
            buf_wipe(&out);
            if (parsed == 0)
                return 0;
            buf_wipe(jwt);
            snprintf(why, sizeof why, "spire-agent printed no token(...) line with a JWT");
        } else {
            buf_wipe(&out);
            if (rc > 0 && !why[0])
                snprintf(why, sizeof why, "spire-agent exited with status %d", rc);
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            break;
        sleep_ms(pause < left ? pause : left);
        if (pause < 2000)
            pause *= 2;
    }
    err_set(e,
            "could not fetch a JWT-SVID (audience %s) from the SPIRE agent at %.200s in %ld s "
            "(%d attempts; last error: %s); check that the agent runs and has a registration "
            "entry for this job",
            audience, socket, wait_s, attempts, why[0] ? why : "none");
    return -1;
}

const char *svid_endpoint_path(const char *uri)
{
    if (!strncmp(uri, "unix://", 7))
        uri += 7;
    else if (!strncmp(uri, "unix:", 5))
        uri += 5;
    return *uri == '/' ? uri : NULL;
}

long long svid_expiry(const char *jwt, size_t len)
{
    const char *first = memchr(jwt, '.', len);
    if (!first)
        return -1;
    const char *payload = first + 1;
    const char *second = memchr(payload, '.', len - (size_t)(payload - jwt));
    if (!second)
        return -1;
    size_t n = (size_t)(second - payload);
    if (n == 0 || n > MAX_JWT)
        return -1;
    /* base64url -> base64: the decoder takes the standard alphabet. */
    char *std = malloc(n + 1);
    unsigned char *json = malloc(n / 4 * 3 + 4);
    long long exp = -1;
    if (!std || !json)
        goto out;
    for (size_t i = 0; i < n; i++)
        std[i] = payload[i] == '-' ? '+' : payload[i] == '_' ? '/' : payload[i];
    long got = base64_decode(std, n, json);
    if (got <= 0)
        goto out;
    json[got] = '\0';
    /* A quoted "exp" followed by a colon is a key: a string value would be
     * followed by ',', '}' or ']', and quotes inside strings are escaped. */
    const char *k = memmem(json, (size_t)got, "\"exp\"", 5);
    if (!k)
        goto out;
    k += 5;
    while (*k == ' ' || *k == '\t' || *k == '\n' || *k == '\r')
        k++;
    if (*k++ != ':')
        goto out;
    while (*k == ' ' || *k == '\t' || *k == '\n' || *k == '\r')
        k++;
    if (*k < '0' || *k > '9')
        goto out;
    long long v = 0;
    while (*k >= '0' && *k <= '9' && v < 100000000000LL)
        v = v * 10 + (*k++ - '0');
    exp = v;
out:
    free(std);
    if (json)
        explicit_bzero(json, n / 4 * 3 + 4);
    free(json);
    return exp;
}
