/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "copyin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Relative path of the entry being copied, for messages. */
struct walk {
    char path[4096];
    struct copy_stats *st;
    struct err *e;
};

static size_t path_push(struct walk *w, const char *name)
{
    size_t old = strlen(w->path);
    snprintf(w->path + old, sizeof w->path - old, "%s%s", old ? "/" : "", name);
    return old;
}

static int fail(struct walk *w, const char *what)
{
    err_set(w->e, "copy-in of %.300s failed: %s: %s; the workspace is incomplete", w->path,
            what, strerror(errno));
    return -1;
}

/* Closes fds (-1 = none) without losing the errno of the failure. */
static void close_keep_errno(int a, int b)
{
    int saved = errno;
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    errno = saved;
}

/* Removes whatever dst has at name unless it is a directory (which a
 * directory in the source reuses). */
static int clear_entry(int dfd, const char *name, int keep_dir)
{
    struct stat sb;
    if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(sb.st_mode)) {
        if (keep_dir)
            return 0;
        errno = EISDIR; /* a source file where dst has a directory: refuse */
        return -1;
    }
    return unlinkat(dfd, name, 0);
}

static int copy_file(struct walk *w, int sfd, int dfd, const char *name, const struct stat *sb)
{
    /* O_NONBLOCK + fstat: if the entry stopped being a regular file since
     * it was listed (a FIFO), skip past it instead of blocking forever. */
    int in = openat(sfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (in < 0)
        return fail(w, "cannot open the source file");
    struct stat now;
    if (fstat(in, &now) < 0 || !S_ISREG(now.st_mode)) {
        close(in);
        errno = EINVAL;
        return fail(w, "the source file changed while it was copied");
    }
    /* Back to blocking reads: some filesystems honour O_NONBLOCK on files. */
    if (fcntl(in, F_SETFL, fcntl(in, F_GETFL) & ~O_NONBLOCK) < 0) {
        close_keep_errno(in, -1);
        return fail(w, "cannot read the source file");
    }
    if (clear_entry(dfd, name, 0) < 0) {
        close_keep_errno(in, -1);
        return fail(w, "cannot replace the existing entry");
    }
    int out = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
        close_keep_errno(in, -1);
        return fail(w, "cannot create the file");
    }
    static char chunk[128 * 1024];
    for (;;) {
        ssize_t n = read_retry(in, chunk, sizeof chunk);
        if (n < 0) {
            close_keep_errno(in, out);
            return fail(w, "read error");
        }
        if (n == 0)
            break;
        if (write_all(out, chunk, (size_t)n) < 0) {
            close_keep_errno(in, out);
            return fail(w, "write error");
        }
    }
    close(in);
    struct timespec times[2] = {sb->st_atim, sb->st_mtim};
    if (fchmod(out, sb->st_mode & 07777) < 0) {
        close_keep_errno(out, -1);
        return fail(w, "cannot set the mode");
    }
    (void)futimens(out, times); /* mtimes are a courtesy, not a requirement */
    if (close(out) < 0)
        return fail(w, "write error");
    w->st->files++;
    return 0;
}

static int copy_link(struct walk *w, int sfd, int dfd, const char *name, const struct stat *sb)
{
    char target[4096];
    ssize_t n = readlinkat(sfd, name, target, sizeof target - 1);
    if (n < 0)
        return fail(w, "cannot read the symlink");
    target[n] = '\0';
    if (clear_entry(dfd, name, 0) < 0)
        return fail(w, "cannot replace the existing entry");
    if (symlinkat(target, dfd, name) < 0)
        return fail(w, "cannot create the symlink");
    struct timespec times[2] = {sb->st_atim, sb->st_mtim};
    (void)utimensat(dfd, name, times, AT_SYMLINK_NOFOLLOW);
    w->st->links++;
    return 0;
}

static int copy_dir_contents(struct walk *w, int sfd, int dfd, int top);

static int copy_dir(struct walk *w, int sfd, int dfd, const char *name, const struct stat *sb)
{
    if (clear_entry(dfd, name, 1) < 0)
        return fail(w, "cannot replace the existing entry");
    /* Created owner-writable so it can be filled; its real mode comes last,
     * after its contents (a 0555 source directory stays copyable). */
    if (mkdirat(dfd, name, 0700) < 0 && errno != EEXIST)
        return fail(w, "cannot create the directory");
    int s = openat(sfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (s < 0)
        return fail(w, "cannot open the source directory");
    int d = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (d < 0) {
        close_keep_errno(s, -1);
        return fail(w, "cannot open the new directory");
    }
    if (fchmod(d, 0700) < 0) {
        close_keep_errno(s, d);
        return fail(w, "cannot make the directory writable");
    }
    int rc = copy_dir_contents(w, s, d, 0); /* takes s */
    if (rc == 0) {
        struct timespec times[2] = {sb->st_atim, sb->st_mtim};
        if (fchmod(d, sb->st_mode & 07777) < 0)
            rc = fail(w, "cannot set the mode");
        else
            (void)futimens(d, times);
    }
    close(d);
    if (rc == 0)
        w->st->dirs++;
    return rc;
}

/* Copies what the source directory sfd holds into dfd; takes ownership of
 * sfd (it becomes the directory stream's descriptor), so a deep tree costs
 * two descriptors per level. */
static int copy_dir_contents(struct walk *w, int sfd, int dfd, int top)
{
    DIR *dir = fdopendir(sfd);
    if (!dir) {
        int rc = fail(w, "cannot read the source directory");
        close(sfd);
        return rc;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (!de) {
            if (errno)
                rc = fail(w, "cannot read the source directory");
            break;
        }
        const char *name = de->d_name;
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        if (top && !strcmp(name, COPYIN_MARKER))
            continue;
        size_t old = path_push(w, name);
        struct stat sb;
        if (fstatat(sfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
            rc = fail(w, "cannot stat the source entry");
        else if (S_ISREG(sb.st_mode))
            rc = copy_file(w, sfd, dfd, name, &sb);
        else if (S_ISDIR(sb.st_mode))
            rc = copy_dir(w, sfd, dfd, name, &sb);
        else if (S_ISLNK(sb.st_mode))
            rc = copy_link(w, sfd, dfd, name, &sb);
        else {
            /* Devices, FIFOs and sockets mean nothing in another container
             * and a FIFO would block the copy: skip them. */
            if (w->st->skipped++ == 0)
                snprintf(w->st->first_skipped, sizeof w->st->first_skipped, "%.255s", w->path);
        }
        w->path[old] = '\0';
        if (rc)
            break;
    }
    closedir(dir);
    return rc;
}

int copyin_tree(const char *src, const char *dst, struct copy_stats *st, struct err *e)
{
    struct walk w = {.path = "", .st = st, .e = e};
    memset(st, 0, sizeof *st);
    int s = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s < 0) {
        err_set(e, "cannot open the upload %.300s: %s; check the /flashpods/input mount", src,
                strerror(errno));
        return -1;
    }
    int d = open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) {
        err_set(e, "cannot open the workspace %.300s: %s; check the /workspace mount", dst,
                strerror(errno));
        close(s);
        return -1;
    }
    int rc = copy_dir_contents(&w, s, d, 1); /* takes s */
    close(d);
    return rc;
}

int copyin_run(const char *src, const char *dst, int *copied, struct copy_stats *st,
               struct err *e)
{
    *copied = 0;
    struct stat sb;
    if (stat(src, &sb) < 0) {
        if (errno == ENOENT)
            return 0; /* no upload: nothing to copy */
        err_set(e, "cannot inspect the upload %.300s: %s", src, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        err_set(e, "the upload %.300s is not a directory; mount the upload directory there", src);
        return -1;
    }
    int d = open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) {
        err_set(e, "cannot open the workspace %.300s: %s; check the /workspace mount", dst,
                strerror(errno));
        return -1;
    }
    struct stat mb;
    if (fstatat(d, COPYIN_MARKER, &mb, AT_SYMLINK_NOFOLLOW) == 0) {
        close(d);
        return 0; /* copied by an earlier start of this job */
    }
    if (copyin_tree(src, dst, st, e) < 0) {
        close(d);
        return -1;
    }
    /* The marker is written last: only a complete copy is ever marked. */
    int m = openat(d, COPYIN_MARKER, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (m < 0) {
        err_set(e, "cannot write the marker %.300s/%s: %s", dst, COPYIN_MARKER, strerror(errno));
        close(d);
        return -1;
    }
    char line[160];
    int n = snprintf(line, sizeof line, "files=%ld dirs=%ld links=%ld skipped=%ld\n", st->files,
                     st->dirs, st->links, st->skipped);
    if (write_all(m, line, (size_t)n) < 0 || close(m) < 0) {
        err_set(e, "cannot write the marker %.300s/%s: %s", dst, COPYIN_MARKER, strerror(errno));
        close(d);
        return -1;
    }
    close(d);
    *copied = 1;
    return 0;
}
