/* Turns the exchange's text/plain answer ("NAME=<base64>" lines) into
 * environment variables. */
#ifndef FLASHPODS_SECRETS_H
#define FLASHPODS_SECRETS_H

#include "util.h"

/* Validates and decodes every line of body first, then setenv()s them all, so
 * a bad answer never leaves half of the secrets applied. Stores how many were
 * set in *count. Messages name the line number and variable, never a value. */
int secrets_apply(const char *body, size_t len, int *count, struct err *e);

/* NAME must match [A-Z_][A-Z0-9_]* (at most 128 characters). */
int secrets_valid_name(const char *name, size_t len);

#endif
