/* Token-socket probe for the integration tests: runs inside a job container (via
 * `podman exec`), sends POST /v1/exchange with an optional JSON body and prints the
 * HTTP status, then for a 200 only the granted NAMES (never values).
 * Needed because the real helper, flashpods-init, always asks for everything its
 * role allows, and busybox `nc` cannot talk to unix sockets.
 * usage: probe SOCKET [BODY] */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe SOCKET [BODY]\n"); return 2; }
    const char *body = argc > 2 ? argv[2] : "";
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 3; }
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "POST /v1/exchange HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(body), body);
    if (write(fd, req, n) != n) { perror("write"); return 3; }
    static char buf[65536];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf - 1 && (r = read(fd, buf + got, sizeof buf - 1 - got)) > 0) got += r;
    buf[got] = 0;
    int status = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1) { fprintf(stderr, "no status line\n"); return 3; }
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
