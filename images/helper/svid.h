/* Fetching a JWT-SVID with the SPIRE agent's CLI (spire mode). */
#ifndef FLASHPODS_SVID_H
#define FLASHPODS_SVID_H

#include "util.h"

/* Runs `<agent> api fetch jwt -audience <audience> -socketPath <socket>` until
 * it prints a token or wait_s seconds have passed (the agent may still be
 * attesting a container that has just started). On success the JWT is in
 * *jwt (caller wipes it) and 0 is returned; otherwise -1 with e filled. */
int svid_fetch(const char *agent, const char *socket, const char *audience, long wait_s,
               struct buf *jwt, struct err *e);

/* Extracts the first token from the CLI's default ("pretty") output:
 *   token(<spiffe id>):\n\t<jwt>\n  [hint(...):\n\t...\n]  bundle(<td>):\n\t<jwks>\n
 * Returns 0 and fills jwt, or -1 when there is no well-formed token. */
int svid_parse_output(const char *out, size_t len, struct buf *jwt);

#endif
