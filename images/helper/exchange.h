/* The token exchange: one HTTP/1.1 request over the token service's unix
 * socket (docs/design.md, "Token exchange wire format"). */
#ifndef FLASHPODS_EXCHANGE_H
#define FLASHPODS_EXCHANGE_H

#include "util.h"

/* Largest response accepted; a bigger one is refused rather than trusted. */
#define EXCHANGE_MAX_RESPONSE (1024 * 1024)

/* POSTs /v1/exchange to the unix socket at path, with "Authorization: Bearer
 * <bearer>" when bearer is not NULL. timeout_s bounds connecting (retried
 * while the socket is missing or refuses, e.g. during a service restart),
 * every read and write, and the whole answer. An answer that says the service
 * is busy (503 "busy", 429) is retried, with backoff, for up to busy_wait_s. On
 * HTTP 200 the body is left in *body (caller wipes it) and 0 is returned;
 * otherwise -1 with e filled. */
int exchange_fetch(const char *path, const char *bearer, long timeout_s, long busy_wait_s,
                   struct buf *body, struct err *e);

#endif
