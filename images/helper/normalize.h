/* --normalize: make a job's leftovers manageable by the group again. */
#ifndef FLASHPODS_NORMALIZE_H
#define FLASHPODS_NORMALIZE_H

struct normalize_stats {
    long seen, changed, failed;
};

/* chmod u+rwX,g+rwX on root and everything under it. Symlinks are never
 * followed (neither the root, nor while descending, nor when changing a mode);
 * each failure is reported on stderr and counted, and the walk goes on. */
void normalize_tree(const char *root, struct normalize_stats *st);

#endif
