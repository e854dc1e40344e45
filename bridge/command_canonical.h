/*
 * command_canonical.h - the canonical text of a command, the bytes its HMAC covers.
 *
 * Written by this module rather than by json_dumps so that the rules are
 * ours, exact and the same as what a Python or JavaScript signer produces
 * (docs/commands-and-security.md, "Signing"; test vectors in tests/unit/data/signing-vectors.json):
 *   - the command object without its top-level "signature" member;
 *   - UTF-8, no whitespace anywhere;
 *   - object members sorted by key, comparing the UTF-8 bytes (= code points);
 *   - strings: '"' and '\' as \" and \\; U+0008, U+000C, U+000A, U+000D,
 *     U+0009 as \b \f \n \r \t; every other U+0000-U+001F as \u00xx with
 *     lower-case hex; everything else (U+007F, '/', non-ASCII) as is;
 *   - integers in plain decimal (the int64 range jansson reads);
 *   - true, false, null;
 *   - real numbers are refused: no command argument is one, and their text
 *     differs between languages ("1.0", "1", "1e+100").
 * This is Python's json.dumps(obj, sort_keys=True, separators=(",", ":"),
 * ensure_ascii=False) and JavaScript's JSON.stringify of each string.
 */
#ifndef QB_COMMAND_CANONICAL_H
#define QB_COMMAND_CANONICAL_H

#include <jansson.h>
#include <stddef.h>

/*
 * Writes the canonical text of command (a JSON object, borrowed) into *text:
 * a new NUL-terminated buffer the caller frees, *len bytes long (not counting
 * the NUL). Returns QB_OK; QB_EINVAL when command is not an object, holds a
 * real number or is nested deeper than 32 levels, with errbuf naming where
 * ("data.size: a real number cannot be signed (1.5)"); QB_ENOMEM. On error
 * *text is NULL.
 */
int qb_command_canonical(const json_t *command, char **text, size_t *len, char *errbuf,
                         size_t errlen);

#endif
