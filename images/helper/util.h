/* Small helpers shared by every part of flashpods-init: messages, EINTR-safe
 * I/O, growable buffers and environment parsing. */
#ifndef FLASHPODS_UTIL_H
#define FLASHPODS_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Exit codes (see README.md). */
#define EXIT_HELPER_FAILED 125 /* the helper itself failed; the command never ran */
#define EXIT_NOT_EXECUTABLE 126
#define EXIT_NOT_FOUND 127

/* A failure message is built into an error buffer by the part that failed and
 * printed once by main, so every failure is exactly one line on stderr. */
#define ERRBUF_SIZE 1024
struct err {
    char msg[ERRBUF_SIZE];
};

void err_set(struct err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "flashpods-init: <message>\n" to stderr in one write. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* write(2) until everything is written; retries EINTR and short writes. */
int write_all(int fd, const void *buf, size_t len);

/* read(2) that retries EINTR. */
ssize_t read_retry(int fd, void *buf, size_t len);

/* Growable byte buffer, always NUL-terminated (the NUL is not counted). */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};
int buf_append(struct buf *b, const void *data, size_t len);
/* Overwrites the contents with zeros before freeing (it may hold secrets). */
void buf_wipe(struct buf *b);

/* Monotonic clock in milliseconds. */
long long now_ms(void);
/* Sleeps ms milliseconds, resuming after signals. */
void sleep_ms(long long ms);

/* Reads a non-negative integer of seconds from the environment variable name
 * into *out (default when unset or empty). Returns -1 and fills e when the
 * value is not a number in [0, max]. */
int env_seconds(const char *name, long def, long max, long *out, struct err *e);

/* Copies s into out (size n) keeping only printable ASCII, so text that came
 * from another process cannot break the one-line message format. */
void sanitize(char *out, size_t n, const char *s, size_t len);

#endif
