/* The credential proxy's in-container side (docs/design.md, "Credential
 * proxy"): a relay on 127.0.0.1 for clients that speak TCP (HTTPS_PROXY), and
 * the host's proxy CA written where TLS libraries look. */
#ifndef FLASHPODS_RELAY_H
#define FLASHPODS_RELAY_H

#include "util.h"

/* When the proxy socket exists: fetch the CA into /tmp/flashpods/, start the
 * relay (a daemon reparented to the container's init) and set HTTPS_PROXY and
 * the CA variables. Returns 0 (also when there is no proxy), or -1 with e. */
int relay_start(struct err *e);

#endif
