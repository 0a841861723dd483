/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "normalize.h"

#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static mode_t wanted_mode(mode_t mode)
{
    mode_t add = S_IRUSR | S_IWUSR | S_IRGRP | S_IWGRP;
    /* X: execute for directories, and for files that some class may
     * already execute. */
    if (S_ISDIR(mode) || (mode & (S_IXUSR | S_IXGRP | S_IXOTH)))
        add |= S_IXUSR | S_IXGRP;
    return (mode & 07777) | add;
}

static void report(struct normalize_stats *st, const char *path, const char *what)
{
    st->failed++;
    say("normalize: %s %.400s: %s", what, path, strerror(errno));
}

/* Changes the mode of name (known not to be a symlink) without following a
 * link that might have replaced it since: AT_SYMLINK_NOFOLLOW where the C
 * library and kernel support it, plain fchmodat otherwise. */
static int chmod_nofollow(int dfd, const char *name, mode_t mode)
{
    if (fchmodat(dfd, name, mode, AT_SYMLINK_NOFOLLOW) == 0)
        return 0;
    if (errno == ENOTSUP || errno == EOPNOTSUPP || errno == ENOSYS)
        return fchmodat(dfd, name, mode, 0);
    return -1;
}

static void walk(int dfd, const char *name, char *path, size_t plen, size_t cap,
                 struct normalize_stats *st)
{
    struct stat sb;
    if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
        report(st, path, "cannot stat");
        return;
    }
    if (S_ISLNK(sb.st_mode))
        return; /* never touched, never followed */
    st->seen++;
    mode_t want = wanted_mode(sb.st_mode);
    if (want != (sb.st_mode & 07777)) {
        /* On failure still try to descend: a directory of another owner may
         * be readable through its group or other bits. */
        if (chmod_nofollow(dfd, name, want) < 0) {
            report(st, path, "cannot chmod");
        } else {
            st->changed++;
        }
    }
    if (!S_ISDIR(sb.st_mode))
        return;

    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        report(st, path, "cannot open directory");
        return;
    }
    DIR *dir = fdopendir(fd);
    if (!dir) {
        report(st, path, "cannot read directory");
        close(fd);
        return;
    }
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (!de) {
            if (errno)
                report(st, path, "cannot read directory");
            break;
        }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        int n = snprintf(path + plen, cap - plen, "/%s", de->d_name);
        if (n < 0 || (size_t)n >= cap - plen) {
            path[plen] = '\0';
            errno = ENAMETOOLONG;
            report(st, path, "path too long under");
            continue;
        }
        walk(fd, de->d_name, path, plen + (size_t)n, cap, st);
        path[plen] = '\0';
    }
    closedir(dir);
}

void normalize_tree(const char *root, struct normalize_stats *st)
{
    char path[8192];
    snprintf(path, sizeof path, "%s", root);
    walk(AT_FDCWD, root, path, strlen(path), sizeof path, st);
}
