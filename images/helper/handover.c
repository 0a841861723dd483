/* Warm containers: wait for the handed-over command. See handover.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "handover.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

/* Without inotify (or between its events) the file is looked for this often. */
#define POLL_MS 20

/* Splits the next NUL-terminated token off *p; NULL when none is left. */
static char *next_token(char **p, char *end)
{
    if (*p >= end)
        return NULL;
    char *tok = *p;
    char *nul = memchr(tok, '\0', (size_t)(end - tok));
    if (!nul)
        return NULL;
    *p = nul + 1;
    return tok;
}

static int parse_count(const char *tok, long max, long *out)
{
    if (!tok || !*tok)
        return -1;
    char *endp;
    errno = 0;
    long v = strtol(tok, &endp, 10);
    if (errno || *endp || v < 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

int handover_parse(char *data, size_t len, char ***argv_out, struct err *e)
{
    char *p = data, *end = data + len;
    char *magic = next_token(&p, end);
    if (!magic || strcmp(magic, HANDOVER_MAGIC) != 0) {
        err_set(e, "the handed-over command does not start with %s; the API and this helper "
                   "disagree on the format (update both)", HANDOVER_MAGIC);
        return -1;
    }
    long argc, envc;
    if (parse_count(next_token(&p, end), 65536, &argc) < 0 || argc < 1) {
        err_set(e, "the handed-over command has no valid argument count");
        return -1;
    }
    char **argv = calloc((size_t)argc + 1, sizeof *argv);
    if (!argv) {
        err_set(e, "out of memory reading the handed-over command");
        return -1;
    }
    for (long i = 0; i < argc; i++) {
        argv[i] = next_token(&p, end);
        if (!argv[i]) {
            err_set(e, "the handed-over command is cut short (argument %ld of %ld)", i + 1, argc);
            free(argv);
            return -1;
        }
    }
    if (parse_count(next_token(&p, end), 65536, &envc) < 0) {
        err_set(e, "the handed-over command has no valid environment count");
        free(argv);
        return -1;
    }
    for (long i = 0; i < envc; i++) {
        char *pair = next_token(&p, end);
        char *eq = pair ? strchr(pair, '=') : NULL;
        if (!pair || !eq || eq == pair) {
            err_set(e, "the handed-over environment entry %ld is not NAME=VALUE", i + 1);
            free(argv);
            return -1;
        }
        *eq = '\0';
        if (setenv(pair, eq + 1, 1) < 0) {
            err_set(e, "cannot set %.100s from the handed-over command: %s", pair,
                    strerror(errno));
            free(argv);
            return -1;
        }
    }
    if (p != end) {
        err_set(e, "the handed-over command has trailing data after its environment");
        free(argv);
        return -1;
    }
    *argv_out = argv;
    return 0;
}

/* 1 and the file's bytes in *b when DIR/command exists; 0 when it does not yet. */
static int try_read(const char *dir, struct buf *b, struct err *e)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, HANDOVER_FILE) >= (int)sizeof path) {
        err_set(e, "the control directory path %.200s is too long", dir);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        err_set(e, "cannot open the handed-over command %.300s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        err_set(e, "the handed-over command %.300s is not a regular file", path);
        close(fd);
        return -1;
    }
    char chunk[65536];
    for (;;) {
        ssize_t n = read_retry(fd, chunk, sizeof chunk);
        if (n < 0) {
            err_set(e, "cannot read %.300s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        if ((long)(b->len + (size_t)n) > HANDOVER_MAX_BYTES || buf_append(b, chunk, (size_t)n) < 0) {
            err_set(e, "the handed-over command %.300s is larger than %ld bytes", path,
                    HANDOVER_MAX_BYTES);
            close(fd);
            return -1;
        }
    }
    close(fd);
    return 1;
}

int handover_wait(const char *dir, long timeout_s, char ***argv_out, struct err *e)
{
    struct stat sb;
    if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
        err_set(e, "the control directory %.300s is missing; a warm container needs it mounted",
                dir);
        return -1;
    }
    /* The watch is set before the first look, so a rename between the two is
     * never missed; the poll timeout covers a kernel without inotify. */
    int ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (ino >= 0 && inotify_add_watch(ino, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) < 0) {
        close(ino);
        ino = -1;
    }
    long long deadline = timeout_s > 0 ? now_ms() + timeout_s * 1000LL : 0;
    struct buf b = {0};
    for (;;) {
        int got = try_read(dir, &b, e);
        if (got != 0) {
            if (ino >= 0)
                close(ino);
            if (got < 0) {
                buf_wipe(&b);
                return -1;
            }
            /* The buffer stays allocated: argv points into it until exec. */
            return handover_parse(b.data ? b.data : "", b.len, argv_out, e);
        }
        long long wait = POLL_MS;
        if (ino >= 0)
            wait = 1000;
        if (deadline) {
            long long left = deadline - now_ms();
            if (left <= 0) {
                if (ino >= 0)
                    close(ino);
                err_set(e, "no command was handed over within %ld s (FLASHPODS_WAIT_S)",
                        timeout_s);
                return -1;
            }
            if (left < wait)
                wait = left;
        }
        if (ino >= 0) {
            struct pollfd pfd = {.fd = ino, .events = POLLIN};
            if (poll(&pfd, 1, (int)wait) > 0) {
                char drain[4096];
                while (read(ino, drain, sizeof drain) > 0)
                    ;
            }
        } else {
            sleep_ms(wait);
        }
    }
}
