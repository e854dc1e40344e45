/*
 * utf8.h - well-formed UTF-8, for text from outside that must go into JSON.
 *
 * jansson refuses a string that is not valid UTF-8 (json_string returns
 * NULL), so a message built from a VM name, a topic level or a libvirt error,
 * or one cut to a buffer's size in the middle of a sequence, would vanish
 * together with the object it was meant for.
 */
#ifndef QB_UTF8_H
#define QB_UTF8_H

#include <stddef.h>

/*
 * The length (1-4) of the well-formed UTF-8 sequence at s (n bytes
 * available, n >= 1), or 0 when the bytes there are not valid UTF-8: a
 * stray continuation byte, a sequence cut by n, an overlong form, a
 * surrogate, or past U+10FFFF.
 */
size_t qb_utf8_seq_len(const unsigned char *s, size_t n);

/*
 * Copies src (NUL-terminated, borrowed) into dst (len bytes, NUL-terminated
 * when len > 0) as valid UTF-8: each byte that does not start a well-formed
 * sequence, and a sequence that would not fit, becomes '?'.
 */
void qb_utf8_copy(char *dst, size_t len, const char *src);

#endif
