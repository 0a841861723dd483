/* Standard base64 (RFC 4648 section 4) decoding for token values. */
#ifndef FLASHPODS_BASE64_H
#define FLASHPODS_BASE64_H

#include <stddef.h>

/* Decodes len bytes of src into out (which must hold at least len / 4 * 3 + 3
 * bytes). Padding is optional; whitespace and any other character outside the
 * alphabet are rejected. Returns the decoded length, or -1 when src is not
 * valid base64. */
long base64_decode(const char *src, size_t len, unsigned char *out);

#endif
