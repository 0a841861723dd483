/* memmem, pipe2, explicit_bzero: declared here for glibc and musl alike, not
 * only when the build passes -D_GNU_SOURCE (the Nix build does not). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "secrets.h"

#include "base64.h"

#include <stdlib.h>
#include <string.h>

#define MAX_NAME 128

struct secret {
    char name[MAX_NAME + 1];
    unsigned char *value; /* NUL-terminated */
    size_t len;
};

int secrets_valid_name(const char *name, size_t len)
{
    if (len == 0 || len > MAX_NAME)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        int ok = (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static void free_secrets(struct secret *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (s[i].value) {
            explicit_bzero(s[i].value, s[i].len + 1);
            free(s[i].value);
        }
    }
    free(s);
}

int secrets_apply(const char *body, size_t len, int *count, struct err *e)
{
    struct secret *list = NULL;
    int n = 0, cap = 0, lineno = 0;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        const char *le = eol;
        if (le > p && le[-1] == '\r')
            le--;
        lineno++;
        const char *line = p;
        p = eol + 1;
        if (le == line)
            continue; /* blank lines carry nothing */

        const char *eq = memchr(line, '=', (size_t)(le - line));
        if (!eq || !secrets_valid_name(line, (size_t)(eq - line))) {
            free_secrets(list, n);
            /* The line itself is not printed: it may hold a secret. */
            err_set(e, "line %d of the token service's answer is not NAME=<base64> with NAME "
                       "matching [A-Z_][A-Z0-9_]*; check the token service's secret names",
                    lineno);
            return -1;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct secret *grown = calloc((size_t)cap, sizeof *grown);
            if (!grown) {
                free_secrets(list, n);
                err_set(e, "out of memory decoding the secrets");
                return -1;
            }
            if (list) {
                memcpy(grown, list, (size_t)n * sizeof *list);
                free(list);
            }
            list = grown;
        }
        struct secret *s = &list[n];
        size_t nlen = (size_t)(eq - line);
        memcpy(s->name, line, nlen);
        s->name[nlen] = '\0';
        size_t vlen = (size_t)(le - eq - 1);
        s->value = malloc(vlen / 4 * 3 + 4);
        if (!s->value) {
            free_secrets(list, n);
            err_set(e, "out of memory decoding the secrets");
            return -1;
        }
        n++;
        long dlen = base64_decode(eq + 1, vlen, s->value);
        if (dlen < 0) {
            s->len = vlen / 4 * 3 + 3;
            err_set(e, "the token service's value for %s (line %d) is not valid base64", s->name,
                    lineno);
            free_secrets(list, n);
            return -1;
        }
        s->len = (size_t)dlen;
        s->value[dlen] = '\0';
        if (memchr(s->value, '\0', (size_t)dlen)) {
            err_set(e, "the value of %s contains a NUL byte and cannot be an environment "
                       "variable; store it differently in the token service",
                    s->name);
            free_secrets(list, n);
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        if (setenv(list[i].name, (char *)list[i].value, 1) != 0) {
            err_set(e, "cannot set %s in the environment (out of memory)", list[i].name);
            free_secrets(list, n);
            return -1;
        }
    }
    free_secrets(list, n);
    *count = n;
    return 0;
}
