/* Slowloris against the token socket, for the attack tests: runs inside a job container
 * (via `podman exec`) and keeps N connections open, each sending one byte of a request
 * line per round (1 s), reconnecting whenever the service closes one. Every round it
 * rewrites STATUS with what it saw, so the test can wait for the attack to be in place
 * and check how long the service let one connection live and how many it let one job
 * hold at once.
 * usage: trickle SOCKET N STATUS STOPFILE */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: trickle SOCKET N STATUS STOPFILE\n"); return 2; }
    int n = atoi(argv[2]);
    if (n < 1 || n > 1000) { fprintf(stderr, "N must be 1..1000\n"); return 2; }
    int *fd = calloc(n, sizeof *fd);
    double *born = calloc(n, sizeof *born);
    for (int i = 0; i < n; i++) fd[i] = -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    static const char line[] = "POST /v1/exchange HTTP/1.1\r\n";
    long connects = 0, closed = 0, rounds = 0;
    int max_held = 0;
    double max_life = 0;
    while (access(argv[4], F_OK) != 0) {
        int open_now = 0;
        for (int i = 0; i < n; i++) {
            if (fd[i] < 0) {
                int s = socket(AF_UNIX, SOCK_STREAM, 0);
                struct timeval tv = {.tv_sec = 1};
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { close(s); continue; }
                fcntl(s, F_SETFL, O_NONBLOCK);
                fd[i] = s;
                born[i] = now();
                connects++;
            }
            /* One more byte of the request line; never the end of the headers. */
            char c = line[(long)(now() - born[i]) % (sizeof line - 3)];
            char got[512];
            ssize_t r = recv(fd[i], got, sizeof got, 0);
            int gone = r == 0 || r > 0 || (r < 0 && errno != EAGAIN);
            if (!gone && send(fd[i], &c, 1, MSG_NOSIGNAL) != 1 && errno != EAGAIN) gone = 1;
            if (gone) {
                double life = now() - born[i];
                if (life > max_life) max_life = life;
                close(fd[i]);
                fd[i] = -1;
                closed++;
            } else {
                open_now++;
            }
        }
        /* held: connections that survived at least one round (a refused one is seen
         * closed in the round after its connect). */
        double oldest = 0;
        int held = 0;
        for (int i = 0; i < n; i++) {
            if (fd[i] < 0) continue;
            if (now() - born[i] > oldest) oldest = now() - born[i];
            if (now() - born[i] >= 2.5) held++;
        }
        if (held > max_held) max_held = held;
        rounds++;
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f,
                    "rounds=%ld open=%d held=%d max_held=%d connects=%ld closed=%ld "
                    "max_life=%.1f oldest=%.1f\n",
                    rounds, open_now, held, max_held, connects, closed,
                    max_life > oldest ? max_life : oldest, oldest);
            fclose(f);
            rename(tmp, argv[3]);
        }
        sleep(1);
    }
    return 0;
}
