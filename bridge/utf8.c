/*
 * utf8.c - well-formed UTF-8 (see utf8.h).
 */
#include "utf8.h"

#include <stdint.h>
#include <string.h>

size_t qb_utf8_seq_len(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len, i;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* overlong forms, surrogates and past U+10FFFF are not UTF-8 */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void qb_utf8_copy(char *dst, size_t len, const char *src)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t n = strlen(src), o = 0;

    if (len == 0)
        return;
    while (n > 0 && o + 1 < len) {
        size_t k = qb_utf8_seq_len(p, n);

        if (k == 0 || o + k >= len) {
            dst[o++] = '?';
            k = k ? k : 1;
        } else {
            memcpy(dst + o, p, k);
            o += k;
        }
        p += k;
        n -= k;
    }
    dst[o] = '\0';
}
