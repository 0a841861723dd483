/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "exchange.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

static int connect_once(const char *path, long timeout_s, int *fd_out)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_s > 0 ? timeout_s : 1};
    /* SO_SNDTIMEO also bounds connect() on unix sockets (full backlog). */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    for (;;) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            *fd_out = fd;
            return 0;
        }
        if (errno != EINTR)
            break;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Connects, retrying for up to timeout_s while the service is not (yet)
 * listening: a token service restart must not fail the jobs starting then. */
static int connect_retry(const char *path, long timeout_s, int *fd, struct err *e)
{
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        err_set(e, "token socket path %.200s is too long for a unix socket; use a shorter path",
                path);
        return -1;
    }
    long long deadline = now_ms() + timeout_s * 1000;
    long long pause = 100;
    for (;;) {
        if (connect_once(path, timeout_s, fd) == 0)
            return 0;
        int saved = errno;
        int transient = saved == ECONNREFUSED || saved == ENOENT || saved == EAGAIN;
        if (!transient || now_ms() + pause > deadline) {
            if (saved == ENOENT)
                err_set(e,
                        "token socket %.200s does not exist; mount the token service socket "
                        "there or set FLASHPODS_TOKEN_SOCKET",
                        path);
            else
                err_set(e,
                        "cannot connect to the token service at %.200s: %s; check that the "
                        "token service runs and the socket is mounted",
                        path, strerror(saved));
            return -1;
        }
        sleep_ms(pause);
        if (pause < 1000)
            pause *= 2;
    }
}

static int send_request(int fd, const char *bearer, struct err *e)
{
    struct buf req = {0};
    static const char head[] = "POST /v1/exchange HTTP/1.1\r\n"
                               "Host: localhost\r\n"
                               "User-Agent: flashpods-init\r\n"
                               "Accept: text/plain\r\n"
                               "Content-Length: 0\r\n"
                               "Connection: close\r\n";
    int rc = buf_append(&req, head, sizeof head - 1);
    if (rc == 0 && bearer) {
        rc = buf_append(&req, "Authorization: Bearer ", 22);
        if (rc == 0)
            rc = buf_append(&req, bearer, strlen(bearer));
        if (rc == 0)
            rc = buf_append(&req, "\r\n", 2);
    }
    if (rc == 0)
        rc = buf_append(&req, "\r\n", 2);
    if (rc != 0) {
        buf_wipe(&req);
        err_set(e, "out of memory building the token request");
        return -1;
    }
    const char *p = req.data;
    size_t left = req.len;
    while (left > 0) {
        /* MSG_NOSIGNAL: a service that hangs up early must give an error
         * message, not a silent SIGPIPE death. */
        ssize_t n = send(fd, p, left, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int saved = errno;
            if (saved == EPIPE || saved == ECONNRESET) {
                /* A busy service answers 503 and hangs up without reading the
                 * request: its answer may be waiting. */
                buf_wipe(&req);
                err_set(e, "sending the token request failed: %s", strerror(saved));
                return 1;
            }
            buf_wipe(&req);
            err_set(e, "sending the token request failed: %s%s", strerror(saved),
                    saved == EAGAIN ? " (timed out)" : "");
            return -1;
        }
        p += n;
        left -= (size_t)n;
    }
    buf_wipe(&req);
    return 0;
}

static int read_response(int fd, long timeout_s, struct buf *resp, struct err *e)
{
    /* SO_RCVTIMEO bounds each read; the deadline bounds a service that
     * trickles bytes slowly. */
    long long deadline = now_ms() + timeout_s * 1000;
    char chunk[16384];
    for (;;) {
        if (now_ms() > deadline) {
            err_set(e, "the token service did not finish its answer within %ld s; check the "
                       "token service's log",
                    timeout_s);
            return -1;
        }
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* A service that answers without reading the request (busy) and hangs
             * up makes the kernel report a reset after its answer: that answer is
             * complete or not by its own Content-Length (parse_response checks). */
            if (errno == ECONNRESET && resp->len > 0)
                break;
            if (errno == ECONNRESET) {
                err_set(e, "the token service closed the connection without answering; "
                           "check the token service's log");
                explicit_bzero(chunk, sizeof chunk);
                return -2; /* hung up: the caller may retry */
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                err_set(e, "the token service did not answer within %ld s; check the token "
                           "service's log",
                        timeout_s);
            else
                err_set(e, "reading the token service's answer failed: %s", strerror(errno));
            explicit_bzero(chunk, sizeof chunk);
            return -1;
        }
        if (n == 0)
            break;
        if (resp->len + (size_t)n > EXCHANGE_MAX_RESPONSE) {
            explicit_bzero(chunk, sizeof chunk);
            err_set(e, "the token service's answer is larger than %d bytes; refusing it",
                    EXCHANGE_MAX_RESPONSE);
            return -1;
        }
        if (buf_append(resp, chunk, (size_t)n) != 0) {
            explicit_bzero(chunk, sizeof chunk);
            err_set(e, "out of memory reading the token service's answer");
            return -1;
        }
    }
    explicit_bzero(chunk, sizeof chunk);
    return 0;
}

/* Finds header name (case-insensitive) in the header block [h, end) and
 * returns a pointer to its value (leading blanks skipped), or NULL. */
static const char *find_header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    while (h < end) {
        const char *eol = memchr(h, '\n', (size_t)(end - h));
        if (!eol)
            eol = end;
        if ((size_t)(eol - h) > nlen && strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        h = eol + 1;
    }
    return NULL;
}

/* Decodes a chunked body in place; returns the decoded length or -1. */
static long dechunk(char *body, size_t len)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *eol = memchr(body + in, '\n', len - in);
        if (!eol)
            return -1;
        char *end;
        errno = 0;
        unsigned long size = strtoul(body + in, &end, 16);
        if (errno || end == body + in)
            return -1;
        in = (size_t)(eol - body) + 1;
        if (size == 0)
            return (long)out;
        if (size > len - in)
            return -1;
        memmove(body + out, body + in, size);
        out += size;
        in += size;
        if (in < len && body[in] == '\r')
            in++;
        if (in >= len || body[in] != '\n')
            return -1;
        in++;
    }
}

/* Pulls the "error" string out of a JSON error body without a JSON parser:
 * the token service promises it never holds a secret. */
static void json_error_text(const char *body, size_t len, char *out, size_t n)
{
    out[0] = '\0';
    const char *end = body + len;
    const char *k = memmem(body, len, "\"error\"", 7);
    if (!k)
        return;
    const char *p = k + 7;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p != '"')
        return;
    const char *s = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\' && p + 1 < end)
            p++;
        p++;
    }
    sanitize(out, n, s, (size_t)(p - s));
}

/* Whether an answer says "busy, retry": 503 with code "busy" (too many connections, in
 * all or from this job) or 429 (rate limited). Both clear up within seconds. */
static int is_busy(int status, const char *body, size_t len)
{
    return status == 429 ||
           (status == 503 && (memmem(body, len, "\"code\": \"busy\"", 14) ||
                              memmem(body, len, "\"code\":\"busy\"", 13)));
}

static int parse_response(struct buf *resp, struct buf *body, int *busy, struct err *e)
{
    if (!resp->data) {
        err_set(e, "the token service closed the connection without answering; check the "
                   "token service's log");
        return -1;
    }
    char *data = resp->data;
    size_t len = resp->len;
    /* Status line: "HTTP/1.x NNN[ reason]". */
    int status = 0;
    int well_formed = len >= 13 && strncmp(data, "HTTP/1.", 7) == 0 && data[8] == ' ';
    for (int i = 9; well_formed && i < 12; i++) {
        if (data[i] < '0' || data[i] > '9')
            well_formed = 0;
        else
            status = status * 10 + (data[i] - '0');
    }
    if (well_formed && data[12] != ' ' && data[12] != '\r' && data[12] != '\n')
        well_formed = 0;
    if (!well_formed || status < 100) {
        err_set(e, "the token service's answer is not HTTP (%zu bytes); check that "
                   "FLASHPODS_TOKEN_SOCKET names the token service's socket",
                len);
        return -1;
    }
    char *hdr_end = memmem(data, len, "\r\n\r\n", 4);
    size_t sep = 4;
    if (!hdr_end) {
        hdr_end = memmem(data, len, "\n\n", 2);
        sep = 2;
    }
    if (!hdr_end) {
        err_set(e, "the token service's answer (HTTP %d) ended inside its headers", status);
        return -1;
    }
    char *b = hdr_end + sep;
    size_t blen = len - (size_t)(b - data);
    const char *first_eol = memchr(data, '\n', len);
    const char *hdrs = first_eol ? first_eol + 1 : hdr_end;

    size_t vlen;
    const char *te = find_header(hdrs, hdr_end, "Transfer-Encoding", &vlen);
    if (te && vlen >= 7 && memmem(te, vlen, "chunked", 7)) {
        long n = dechunk(b, blen);
        if (n < 0) {
            err_set(e, "the token service's chunked answer (HTTP %d) is malformed", status);
            return -1;
        }
        blen = (size_t)n;
    } else {
        const char *cl = find_header(hdrs, hdr_end, "Content-Length", &vlen);
        if (cl) {
            char num[32];
            sanitize(num, sizeof num, cl, vlen);
            char *end;
            errno = 0;
            unsigned long n = strtoul(num, &end, 10);
            if (errno || *end || end == num) {
                err_set(e, "the token service sent a bad Content-Length (HTTP %d)", status);
                return -1;
            }
            if (n > blen) {
                err_set(e, "the token service's answer was cut short (%zu of %lu body bytes)",
                        blen, n);
                return -1;
            }
            blen = n;
        }
    }

    if (status != 200) {
        *busy = is_busy(status, b, blen);
        char why[200];
        json_error_text(b, blen, why, sizeof why);
        const char *hint;
        if (status == 401)
            hint = "the token service could not attest this container; only job containers "
                   "started by the Flashpods API get secrets";
        else if (status == 403)
            hint = "this job's role is not granted the requested tokens; check \"roles\" in "
                   "the token service's configuration";
        else
            hint = "check the token service's log";
        err_set(e, "the token service refused the exchange: HTTP %d%s%s%s; %s", status,
                why[0] ? " (" : "", why, why[0] ? ")" : "", hint);
        return -1;
    }
    if (buf_append(body, b, blen) != 0) {
        err_set(e, "out of memory reading the token service's answer");
        return -1;
    }
    return 0;
}

static int exchange_once(const char *path, const char *bearer, long timeout_s,
                         struct buf *body, int *busy, struct err *e)
{
    int fd;
    *busy = 0;
    if (connect_retry(path, timeout_s, &fd, e) != 0)
        return -1;
    struct buf resp = {0};
    struct err send_err = {{0}};
    /* 0 sent, 1 the service hung up (its answer may still be there), -1 failed. */
    int sent = send_request(fd, bearer, &send_err);
    int rc = -1;
    if (sent < 0) {
        *e = send_err;
    } else {
        rc = read_response(fd, timeout_s, &resp, e);
        /* Gone without a byte of answer: the service died mid-exchange (SIGKILL, OOM)
         * or restarted; its successor answers a retry, as a busy service does. */
        int hung_up = rc == -2 || (rc == 0 && !resp.data);
        if (sent == 1 && (rc != 0 || !resp.data)) {
            *e = send_err; /* nothing answered: the failed send is the news */
            rc = -1;
        } else if (rc == 0) {
            rc = parse_response(&resp, body, busy, e);
        }
        if (hung_up) {
            *busy = 1;
            rc = -1;
        }
    }
    close(fd);
    buf_wipe(&resp);
    return rc;
}

int exchange_fetch(const char *path, const char *bearer, long timeout_s, long busy_wait_s,
                   struct buf *body, struct err *e)
{
    long long deadline = now_ms() + busy_wait_s * 1000;
    long long pause = 200;
    for (;;) {
        int busy;
        int rc = exchange_once(path, bearer, timeout_s, body, &busy, e);
        if (rc == 0 || !busy)
            return rc;
        if (now_ms() + pause > deadline) {
            size_t n = strlen(e->msg);
            snprintf(e->msg + n, sizeof e->msg - n, " (still busy after %ld s of retries)",
                     busy_wait_s);
            return rc;
        }
        sleep_ms(pause);
        if (pause < 2000)
            pause *= 2;
    }
}
