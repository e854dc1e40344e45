/*
 * address.h - the one parser of the socket addresses the bridge connects to
 * or listens on: QMP sockets ("unix:<path>", "tcp:<host>:<port>"), the status
 * API ("unix:<path>", "<host>:<port>", "[<v6>]:<port>") and qmp.listen
 * ("unix:/absolute/path").
 *
 * Parsing checks only the form, so a configuration can be checked without
 * touching the network; qb_address_sockaddr then turns a parsed address into
 * a socket address without name resolution (an IP literal or "localhost"):
 * a daemon that starts at boot must not wait for DNS.
 */
#ifndef QB_ADDRESS_H
#define QB_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The forms a caller accepts (one of them). */
enum qb_address_form {
    QB_ADDRESS_QMP,           /* "unix:<path>" or "tcp:<host>:<port>", port 1-65535 */
    QB_ADDRESS_HTTP,          /* "unix:<path>", "<host>:<port>" or "[<v6>]:<port>", port 0-65535 */
    QB_ADDRESS_UNIX_ABSOLUTE, /* "unix:/<path>" only */
};

/* A parsed address; every pointer points into the text that was parsed. */
struct qb_address {
    bool is_unix;
    const char *path; /* unix: the path (NUL-terminated, the rest of the text) */
    const char *host; /* tcp: the host, brackets removed; host_len bytes, not terminated */
    size_t host_len;
    bool bracketed; /* the host was written in brackets ("[::1]") */
    uint16_t port;
};

/*
 * Parses text in form into *out (pointers into text, which must outlive it).
 * Returns QB_OK, or QB_EINVAL when text is not of that form; the caller words
 * the error, since only it knows which key or option the text came from.
 */
int qb_address_parse(const char *text, enum qb_address_form form, struct qb_address *out);

/*
 * Fills *ss and *len from a parsed address: a Unix path of 1 to 107 bytes,
 * or an IPv4/IPv6 literal ("localhost" is 127.0.0.1). A bracketed host must
 * be IPv6; an unbracketed one may be either (QMP accepts "tcp:::1:4444").
 * Returns QB_OK or QB_EINVAL.
 */
int qb_address_sockaddr(const struct qb_address *a, struct sockaddr_storage *ss, socklen_t *len);

#endif /* QB_ADDRESS_H */
