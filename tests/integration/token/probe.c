/* Token-socket probe for the integration tests: runs inside a job container (via
 * `podman exec`), sends POST /v1/exchange with an optional JSON body and prints the
 * HTTP status, then for a 200 only the granted NAMES (never values).
 * Needed because the real helper, flashpods-init, always asks for everything its
 * role allows, and busybox `nc` cannot talk to unix sockets.
 * With COUNT, it floods: COUNT exchanges, then how many got each status.
 * PROBE_BEARER=<JWT-SVID> in the environment adds Authorization: Bearer (spire mode).
 * usage: probe SOCKET [BODY [COUNT]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* One exchange; returns the HTTP status (0 if none) and leaves the answer in buf. */
static int exchange(const char *sock, const char *body, char *buf, size_t cap) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, sock, sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); close(fd); return -1; }
    /* Spire mode: the JWT-SVID the test fetched inside the job, as the helper sends it. */
    const char *bearer = getenv("PROBE_BEARER");
    char auth[4096] = "";
    if (bearer && *bearer) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", bearer);
    char req[16384];
    int n = snprintf(req, sizeof req,
                     "POST /v1/exchange HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n"
                     "%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     auth, strlen(body), body);
    if (write(fd, req, n) != n) { perror("write"); close(fd); return -1; }
    size_t got = 0;
    ssize_t r;
    while (got < cap - 1 && (r = read(fd, buf + got, cap - 1 - got)) > 0) got += r;
    buf[got] = 0;
    close(fd);
    int status = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1) return 0;
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe SOCKET [BODY [COUNT]]\n"); return 2; }
    const char *body = argc > 2 ? argv[2] : "";
    static char buf[65536];
    if (argc > 3) {
        /* A flood: COUNT exchanges, then one line per status seen: count=STATUS:N. */
        long count = atol(argv[3]), seen[600] = {0};
        for (long i = 0; i < count; i++) {
            int status = exchange(argv[1], body, buf, sizeof buf);
            if (status < 0) return 3;
            seen[status < 600 ? status : 0]++;
        }
        for (int s = 0; s < 600; s++)
            if (seen[s]) printf("count=%d:%ld\n", s, seen[s]);
        return 0;
    }
    int status = exchange(argv[1], body, buf, sizeof buf);
    if (status < 0) return 3;
    if (status == 0) { fprintf(stderr, "no status line\n"); return 3; }
    printf("status=%d\n", status);
    char *p = strstr(buf, "\r\n\r\n");
    if (status == 200 && p) {
        for (char *line = strtok(p + 4, "\n"); line; line = strtok(NULL, "\n")) {
            char *eq = strchr(line, '=');
            if (eq) { *eq = 0; printf("granted=%s\n", line); }
        }
    } else if (p) {
        printf("body=%s\n", p + 4); /* errors never carry secret values */
    }
    return 0;
}
