/* Warm containers: wait for the command the API hands over, then run it.
 *
 * A warm container is created and started before any job asks for it, with
 * `flashpods-init --wait-command` as its command. When a job claims it, the
 * API writes DIR/command (temp file + rename, so it appears whole) into the
 * job's control directory, which is bind-mounted read-only at DIR. Format:
 * NUL-terminated strings
 *     "flashpods-command-1", ARGC, ARGV[0..ARGC-1], ENVC, NAME=VALUE x ENVC
 * with ARGC (>= 1) and ENVC written in decimal. */
#ifndef FLASHPODS_HANDOVER_H
#define FLASHPODS_HANDOVER_H

#include "util.h"

#define HANDOVER_MAGIC "flashpods-command-1"
#define HANDOVER_FILE "command"
#define HANDOVER_MAX_BYTES (16L * 1024 * 1024)

/* Waits until DIR/command exists (inotify on DIR, with a short poll as a
 * fallback), at most timeout_s seconds (0 = forever), then parses it: sets
 * every NAME=VALUE in the environment and returns a NULL-terminated argv in
 * *argv_out (heap; lives until exec). Returns -1 with e filled on failure. */
int handover_wait(const char *dir, long timeout_s, char ***argv_out, struct err *e);

/* Parses a command file's bytes (exposed for tests through the CLI). */
int handover_parse(char *data, size_t len, char ***argv_out, struct err *e);

#endif
