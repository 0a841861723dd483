/* Fetching a JWT-SVID with the SPIRE agent's CLI (spire mode). */
#ifndef FLASHPODS_SVID_H
#define FLASHPODS_SVID_H

#include "util.h"

#define SVID_DEFAULT_AGENT "/flashpods/bin/spire-agent"
#define SVID_DEFAULT_ENDPOINT "/run/spire/sockets/agent.sock"
/* One audience per consumer, so an SVID sent to one is refused by the other
 * (docs/design.md, "Credential proxy"). */
#define SVID_TOKEN_AUDIENCE "flashpods-token"
#define SVID_PROXY_AUDIENCE "flashpods-proxy"

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

/* The bare socket path of a Workload API address (unix:///path or unix:/path;
 * a bare /path is taken as it is), or NULL when it is not an absolute path. */
const char *svid_endpoint_path(const char *uri);

/* The `exp` claim (seconds since the epoch) of a compact JWT, read from its
 * payload without verifying anything (the relay only uses it to know when to
 * fetch a new one), or -1 when there is none. */
long long svid_expiry(const char *jwt, size_t len);

#endif
