/* Copy-in: fills the job's workspace from the read-only upload. */
#ifndef FLASHPODS_COPYIN_H
#define FLASHPODS_COPYIN_H

#include "util.h"

#define COPYIN_MARKER ".flashpods-ready"

struct copy_stats {
    long files, dirs, links, skipped;
    char first_skipped[256]; /* relative path of the first special file skipped */
};

/* Copies the tree under src into dst: regular files, directories and symlinks
 * (as links, never followed), with their modes and modification times.
 * Devices, FIFOs and sockets are skipped and counted. Entries already in dst
 * are replaced, so an interrupted copy can simply run again. A top-level
 * entry named like the marker is not copied. Returns 0, or -1 with e filled. */
int copyin_tree(const char *src, const char *dst, struct copy_stats *st, struct err *e);

/* Step 1 of the container contract: copy src into dst unless dst already has
 * the marker, then write the marker. *copied says whether a copy ran. */
int copyin_run(const char *src, const char *dst, int *copied, struct copy_stats *st,
               struct err *e);

#endif
