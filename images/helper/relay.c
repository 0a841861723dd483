/* See relay.h. The relay adds no trust: in peer mode the host's proxy attests
 * whoever is at the other end of the unix socket, and that is this job's own
 * process; in spire mode it presents the job's own JWT-SVID, which any process
 * of the job could fetch from the SPIRE agent itself. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "relay.h"
#include "svid.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROXY_SOCKET_DEFAULT "/run/flashpods/proxy.sock"
#define CA_DIR "/tmp/flashpods"
#define CA_MAX (64 * 1024)
/* Spire mode: the request line the SVID is put under must arrive within this
 * many bytes and milliseconds; a fetch of a new SVID may take this long. */
#define FIRST_LINE_MAX 8192
#define FIRST_LINE_MS 10000
#define SVID_FETCH_WAIT_MAX_S 10
/* A cached SVID is replaced when this much of its life is left (at most half
 * of it), so the proxy never sees one that expires while it checks it. */
#define SVID_REFRESH_MARGIN_S 30

/* Spire mode: where the relay gets the job's JWT-SVID for the proxy, and the
 * one it holds (fetched by the listening process, handed to each connection's
 * child by the fork). */
struct svid_cache {
    const char *agent;
    const char *endpoint;
    long wait_s; /* FLASHPODS_SVID_WAIT_S, at most SVID_FETCH_WAIT_MAX_S: a client waits */
    struct buf jwt;
    long long refresh_at; /* wall clock, seconds: the proxy checks exp against it */
};

static const char *const SYSTEM_BUNDLES[] = {
    "/etc/ssl/certs/ca-certificates.crt", /* Debian, Alpine */
    "/etc/pki/tls/certs/ca-bundle.crt",   /* Fedora */
    "/etc/ssl/cert.pem",                  /* others */
};

static int connect_proxy(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* GET /ca.pem on the proxy socket; the PEM body into *out. */
static int fetch_ca(const char *path, struct buf *out, struct err *e)
{
    int fd = connect_proxy(path);
    if (fd < 0) {
        err_set(e, "cannot connect to the credential proxy at %.200s: %s", path, strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    static const char req[] = "GET /ca.pem HTTP/1.1\r\nHost: flashpods-proxy\r\n"
                              "Connection: close\r\n\r\n";
    struct buf b = {0};
    char chunk[4096];
    ssize_t n;
    if (write_all(fd, req, sizeof req - 1) < 0)
        goto io;
    while ((n = read_retry(fd, chunk, sizeof chunk)) > 0) {
        if (b.len + (size_t)n > CA_MAX || buf_append(&b, chunk, (size_t)n) < 0) {
            err_set(e, "the credential proxy's CA answer is too large");
            goto fail;
        }
    }
    if (n < 0)
        goto io;
    close(fd);
    const char *body = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
    if (!body || strncmp(b.data, "HTTP/1.1 200 ", 13) != 0 ||
        !strstr(body, "-----BEGIN CERTIFICATE-----")) {
        err_set(e, "the credential proxy did not hand out its CA certificate");
        buf_wipe(&b);
        return -1;
    }
    body += 4;
    if (buf_append(out, body, b.len - (size_t)(body - b.data)) < 0) {
        buf_wipe(&b);
        err_set(e, "out of memory");
        return -1;
    }
    buf_wipe(&b);
    return 0;
io:
    err_set(e, "talking to the credential proxy at %.200s: %s", path, strerror(errno));
fail:
    close(fd);
    buf_wipe(&b);
    return -1;
}

static int write_file(const char *path, const struct buf *first, const char *second_path,
                      struct err *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        err_set(e, "cannot write %.200s: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    if (second_path) { /* the system bundle first, then ours */
        int in = open(second_path, O_RDONLY | O_CLOEXEC);
        if (in >= 0) {
            char chunk[65536];
            ssize_t n;
            while ((n = read_retry(in, chunk, sizeof chunk)) > 0)
                if (write_all(fd, chunk, (size_t)n) < 0)
                    rc = -1;
            close(in);
            if (write_all(fd, "\n", 1) < 0)
                rc = -1;
        }
    }
    if (write_all(fd, first->data, first->len) < 0)
        rc = -1;
    if (close(fd) < 0)
        rc = -1;
    if (rc < 0)
        err_set(e, "cannot write %.200s: %s", path, strerror(errno));
    return rc;
}

/* Copy both ways between a TCP client and the proxy until both are done. */
static void pump(int a, int b)
{
    struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    int open_in[2] = {1, 1};
    char chunk[65536];
    while (open_in[0] || open_in[1]) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        for (int i = 0; i < 2; i++) {
            if (!open_in[i] || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read_retry(p[i].fd, chunk, sizeof chunk);
            int other = p[1 - i].fd;
            if (n <= 0) {
                open_in[i] = 0;
                p[i].fd = -1;
                shutdown(other, SHUT_WR);
                if (i == 1) /* the proxy is done: so is this connection */
                    return;
                continue;
            }
            if (write_all(other, chunk, (size_t)n) < 0)
                return;
        }
    }
}

/* The cached SVID, fetched anew when it is missing or close to its expiry.
 * Returns 0, or -1 with e filled (the caller answers the client with it). */
static int svid_current(struct svid_cache *c, struct err *e)
{
    time_t now = time(NULL);
    if (c->jwt.len && now < c->refresh_at)
        return 0;
    buf_wipe(&c->jwt);
    if (svid_fetch(c->agent, c->endpoint, SVID_PROXY_AUDIENCE, c->wait_s, &c->jwt, e) < 0)
        return -1;
    long long exp = svid_expiry(c->jwt.data, c->jwt.len);
    long long left = exp - (long long)now;
    long long margin = left / 2 < SVID_REFRESH_MARGIN_S ? left / 2 : SVID_REFRESH_MARGIN_S;
    /* No readable exp: use it for this connection only. */
    c->refresh_at = exp > 0 ? exp - margin : 0;
    return 0;
}

/* Answers a TCP client the relay could not serve, in the proxy's error shape. */
static void answer_error(int client, const char *code, const char *msg)
{
    char body[2 * ERRBUF_SIZE], clean[ERRBUF_SIZE + 128], out[3 * ERRBUF_SIZE];
    size_t j = 0;
    for (const char *p = msg; *p && j + 1 < sizeof clean; p++)
        clean[j++] = (*p == '"' || *p == '\\') ? '\'' : *p; /* stays a JSON string */
    clean[j] = '\0';
    int bn = snprintf(body, sizeof body,
                      "{\"type\": \"error\", \"error\": {\"type\": \"%s\", \"message\": \"%s\"}, "
                      "\"code\": \"%s\", \"by\": \"flashpods-init relay\"}\n",
                      code, clean, code);
    if (bn < 0 || (size_t)bn >= sizeof body)
        return;
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nX-Flashpods-Proxy: %s\r\nConnection: close\r\n\r\n%s",
                     bn, code, body);
    if (n <= 0 || (size_t)n >= sizeof out || write_all(client, out, (size_t)n) < 0)
        return;
    /* Closing with the client's request unread would reset the connection and
     * could take the answer with it: read what it sent first (briefly). */
    shutdown(client, SHUT_WR);
    long long deadline = now_ms() + 2000;
    for (;;) {
        long long left = deadline - now_ms();
        struct pollfd p = {.fd = client, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0 || read_retry(client, out, sizeof out) <= 0)
            break;
    }
}

/* Spire mode: reads the client's request line and sends it to the proxy with
 * `Proxy-Authorization: Bearer <SVID>` right after it, then what else came.
 * Bytes that are no HTTP request line (a TLS ClientHello, say) go on as they
 * are: the proxy then refuses them for want of an SVID and says so. */
static int forward_with_svid(int client, int up, const char *jwt)
{
    char first[FIRST_LINE_MAX];
    size_t have = 0;
    char *eol = NULL;
    long long deadline = now_ms() + FIRST_LINE_MS;
    while (!eol && have < sizeof first) {
        long long left = deadline - now_ms();
        struct pollfd p = {.fd = client, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        ssize_t n = read_retry(client, first + have, sizeof first - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        eol = memmem(first, have, "\r\n", 2);
        if (first[0] == 0x16) /* TLS straight away: no line will come */
            break;
    }
    if (!eol || !memmem(first, (size_t)(eol - first), " HTTP/1.", 8))
        return write_all(up, first, have);
    size_t line = (size_t)(eol - first) + 2;
    static const char name[] = "Proxy-Authorization: Bearer ";
    if (write_all(up, first, line) < 0 || write_all(up, name, sizeof name - 1) < 0 ||
        write_all(up, jwt, strlen(jwt)) < 0 || write_all(up, "\r\n", 2) < 0)
        return -1;
    return write_all(up, first + line, have - line);
}

static void serve(int listener, const char *path, struct svid_cache *svid)
{
    /* Children are reaped after each accept (not by ignoring SIGCHLD: the
     * SVID fetch waits for its own spire-agent child). */
    struct err e;
    if (svid)
        (void)svid_current(svid, &e); /* ready before the first connection */
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            _exit(1);
        }
        int no_svid = svid && svid_current(svid, &e) < 0;
        pid_t pid = fork();
        if (pid == 0) {
            close(listener);
            if (no_svid) {
                char msg[ERRBUF_SIZE + 128];
                snprintf(msg, sizeof msg, "flashpods-init's relay has no JWT-SVID for the "
                         "credential proxy: %s", e.msg);
                answer_error(client, "no_svid", msg);
                _exit(0);
            }
            int up = connect_proxy(path);
            if (up < 0) {
                char msg[512];
                snprintf(msg, sizeof msg, "cannot connect to the credential proxy at %.200s: %s",
                         path, strerror(errno));
                answer_error(client, "proxy_unreachable", msg);
                _exit(0);
            }
            if (!svid || forward_with_svid(client, up, svid->jwt.data) == 0)
                pump(client, up);
            _exit(0);
        }
        close(client);
    }
}

int relay_start(struct err *e)
{
    const char *path = getenv("FLASHPODS_PROXY_SOCKET");
    if (!path || !*path)
        path = PROXY_SOCKET_DEFAULT;
    struct stat sb;
    if (stat(path, &sb) < 0 || !S_ISSOCK(sb.st_mode))
        return 0; /* no credential proxy on this host */

    /* Spire mode: the proxy knows the job only from its JWT-SVID (audience
     * flashpods-proxy), which the relay puts on every connection. */
    int spire = !strcmp(getenv("FLASHPODS_ATTESTATION") ? getenv("FLASHPODS_ATTESTATION") : "",
                        "spire");
    struct svid_cache svid = {0};
    if (spire) {
        const char *uri = getenv("SPIFFE_ENDPOINT_SOCKET");
        svid.endpoint = svid_endpoint_path(uri && *uri ? uri : SVID_DEFAULT_ENDPOINT);
        const char *agent = getenv("FLASHPODS_SPIRE_AGENT");
        svid.agent = agent && *agent ? agent : SVID_DEFAULT_AGENT;
        if (!svid.endpoint) {
            err_set(e, "SPIFFE_ENDPOINT_SOCKET must be unix:///<absolute path>; got %.200s", uri);
            return -1;
        }
        if (env_seconds("FLASHPODS_SVID_WAIT_S", 30, 86400, &svid.wait_s, e) < 0)
            return -1;
        if (svid.wait_s > SVID_FETCH_WAIT_MAX_S)
            svid.wait_s = SVID_FETCH_WAIT_MAX_S;
    }

    struct buf ca = {0};
    if (fetch_ca(path, &ca, e) < 0)
        return -1;
    if (mkdir(CA_DIR, 0755) < 0 && errno != EEXIST) {
        err_set(e, "cannot create %s: %s", CA_DIR, strerror(errno));
        buf_wipe(&ca);
        return -1;
    }
    const char *system = NULL;
    for (size_t i = 0; i < sizeof SYSTEM_BUNDLES / sizeof *SYSTEM_BUNDLES; i++)
        if (access(SYSTEM_BUNDLES[i], R_OK) == 0) {
            system = SYSTEM_BUNDLES[i];
            break;
        }
    int rc = write_file(CA_DIR "/ca.pem", &ca, NULL, e);
    if (rc == 0)
        rc = write_file(CA_DIR "/ca-bundle.pem", &ca, system, e);
    buf_wipe(&ca);
    if (rc < 0)
        return -1;

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (listener < 0 || bind(listener, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        listen(listener, 128) < 0 || getsockname(listener, (struct sockaddr *)&sin, &len) < 0) {
        err_set(e, "cannot start the proxy relay on 127.0.0.1: %s", strerror(errno));
        if (listener >= 0)
            close(listener);
        return -1;
    }
    /* Double fork: the relay is reparented to the container's init, so the
     * job's command never sees an unknown child it might wait for. */
    pid_t pid = fork();
    if (pid < 0) {
        err_set(e, "cannot start the proxy relay: %s", strerror(errno));
        close(listener);
        return -1;
    }
    if (pid == 0) {
        if (fork() == 0) {
            setsid();
            int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (devnull >= 0)
                dup2(devnull, STDIN_FILENO);
            serve(listener, path, spire ? &svid : NULL);
        }
        _exit(0);
    }
    close(listener);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;

    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    static const char *const bundle_vars[] = {"SSL_CERT_FILE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                                              "REQUESTS_CA_BUNDLE"};
    if (setenv("HTTPS_PROXY", url, 1) < 0 || setenv("https_proxy", url, 1) < 0 ||
        setenv("NO_PROXY", "localhost,127.0.0.1,::1", 0) < 0 ||
        setenv("NODE_EXTRA_CA_CERTS", CA_DIR "/ca.pem", 1) < 0 ||
        setenv("FLASHPODS_PROXY_CA", CA_DIR "/ca.pem", 1) < 0) {
        err_set(e, "cannot set the proxy's environment: %s", strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < sizeof bundle_vars / sizeof *bundle_vars; i++)
        if (setenv(bundle_vars[i], CA_DIR "/ca-bundle.pem", 1) < 0) {
            err_set(e, "cannot set the proxy's environment: %s", strerror(errno));
            return -1;
        }
    return 0;
}
