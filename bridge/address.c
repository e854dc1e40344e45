/*
 * address.c - parsing socket addresses (see address.h for the forms).
 */
#include "address.h"

#include "error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

/* Decimal digits only (no sign, no spaces), at most 65535; min_port is 0 or 1. */
static int address_parse_port(const char *s, unsigned min_port, uint16_t *out)
{
    unsigned long v = 0;

    if (!*s)
        return QB_EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return QB_EINVAL;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > 65535)
            return QB_EINVAL;
    }
    if (v < min_port)
        return QB_EINVAL;
    *out = (uint16_t)v;
    return QB_OK;
}

/* "<host>:<port>" where the port follows the last ':' (so a bare IPv6 host works). */
static int address_parse_tcp_last_colon(const char *spec, struct qb_address *out)
{
    const char *colon = strrchr(spec, ':');

    if (!colon || colon == spec)
        return QB_EINVAL;
    out->host = spec;
    out->host_len = (size_t)(colon - spec);
    if (spec[0] == '[' && colon[-1] == ']' && out->host_len >= 2) {
        out->host = spec + 1;
        out->host_len -= 2;
        out->bracketed = true;
    }
    if (out->host_len == 0)
        return QB_EINVAL;
    return address_parse_port(colon + 1, 1, &out->port);
}

/* "[<v6>]:<port>" or "<host>:<port>" with no ':' in host. */
static int address_parse_tcp_http(const char *text, struct qb_address *out)
{
    const char *port_text;

    if (text[0] == '[') {
        const char *end = strchr(text, ']');

        if (!end || end[1] != ':')
            return QB_EINVAL;
        out->host = text + 1;
        out->host_len = (size_t)(end - text - 1);
        out->bracketed = true;
        port_text = end + 2;
    } else {
        const char *colon = strrchr(text, ':');

        if (!colon || memchr(text, ':', (size_t)(colon - text)))
            return QB_EINVAL;
        out->host = text;
        out->host_len = (size_t)(colon - text);
        port_text = colon + 1;
    }
    return address_parse_port(port_text, 0, &out->port);
}

int qb_address_parse(const char *text, enum qb_address_form form, struct qb_address *out)
{
    memset(out, 0, sizeof(*out));
    if (!text)
        return QB_EINVAL;
    if (strncmp(text, "unix:", 5) == 0) {
        out->is_unix = true;
        out->path = text + 5;
        if (!out->path[0] || (form == QB_ADDRESS_UNIX_ABSOLUTE && out->path[0] != '/'))
            return QB_EINVAL;
        return QB_OK;
    }
    switch (form) {
    case QB_ADDRESS_QMP:
        if (strncmp(text, "tcp:", 4) != 0)
            return QB_EINVAL;
        return address_parse_tcp_last_colon(text + 4, out);
    case QB_ADDRESS_HTTP:
        return address_parse_tcp_http(text, out);
    case QB_ADDRESS_UNIX_ABSOLUTE:
        break;
    }
    return QB_EINVAL;
}

int qb_address_sockaddr(const struct qb_address *a, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];

    memset(ss, 0, sizeof(*ss));
    if (a->is_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        size_t plen = strlen(a->path);

        /* A longer path would be cut short by the kernel and reach another socket. */
        if (plen == 0 || plen >= sizeof(un->sun_path))
            return QB_EINVAL;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, a->path, plen + 1);
        *len = (socklen_t)sizeof(*un);
        return QB_OK;
    }
    if (a->host_len == 0 || a->host_len >= sizeof(host))
        return QB_EINVAL;
    memcpy(host, a->host, a->host_len);
    host[a->host_len] = '\0';
    if (!a->bracketed) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)ss;

        if (strcmp(host, "localhost") == 0)
            strcpy(host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
            in4->sin_family = AF_INET;
            in4->sin_port = htons(a->port);
            *len = (socklen_t)sizeof(*in4);
            return QB_OK;
        }
    }
    {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return QB_EINVAL;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(a->port);
        *len = (socklen_t)sizeof(*in6);
    }
    return QB_OK;
}
