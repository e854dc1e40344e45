/*
 * log_journal.c - the journal format: each line goes to journald through its
 * native protocol (sd_journal_sendv), with a syslog PRIORITY that
 * `journalctl -p` filters on and the fields VM, TRANSPORT and COMMAND_ID that
 * `journalctl VM=vm1` matches. The journal stamps each entry itself, so the
 * message carries no time of ours.
 *
 * Also here: whether stderr is a journal stream, which is how "auto" picks
 * this format under systemd without being told.
 */
#include "error.h"
#include "log_line.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#define SYSLOG_IDENTIFIER "qmp-bridge"

/* syslog(3) priorities by qb_log_level: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */
static const char *const priorities[] = {"PRIORITY=3", "PRIORITY=4", "PRIORITY=6", "PRIORITY=7"};

/* Parses the decimal number at s, which must end with the byte stop (*end then points there). */
static bool parse_number(const char *s, char stop, unsigned long long *out, const char **end)
{
    char *e;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    *out = strtoull(s, &e, 10);
    if (errno || *e != stop)
        return false;
    *end = e;
    return true;
}

bool qb_log_journal_is_stderr(void)
{
    const char *stream = getenv("JOURNAL_STREAM"), *p;
    unsigned long long dev, ino;
    struct stat st;

    if (!stream || !parse_number(stream, ':', &dev, &p) || !parse_number(p + 1, '\0', &ino, &p))
        return false;
    if (fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* Points iov[*n] at "key=value" written in buf (a no-op when value is NULL). */
static void add_field(struct iovec *iov, int *n, char *buf, size_t buflen, const char *key,
                      const char *value)
{
    int len;

    if (!value)
        return;
    len = snprintf(buf, buflen, "%s=%s", key, value);
    if (len < 0)
        return;
    /* the buffers hold the longest escaped value: a cut is not expected, only survived */
    iov[(*n)++] = (struct iovec){buf, (size_t)len < buflen ? (size_t)len : buflen - 1};
}

int qb_log_journal_write(const struct qb_log_line *line)
{
    static const char identifier[] = "SYSLOG_IDENTIFIER=" SYSLOG_IDENTIFIER;
    char message[sizeof("MESSAGE=") + 4 * 2048];
    char vm[sizeof("VM=") + 256], transport[sizeof("TRANSPORT=") + 256];
    char command_id[sizeof("COMMAND_ID=") + 4 * QB_LOG_COMMAND_ID_MAX + 1];
    struct iovec iov[6];
    int n = 0;

    if ((unsigned)line->level >= sizeof(priorities) / sizeof(priorities[0]))
        return QB_EINVAL;
    iov[n++] = (struct iovec){(void *)priorities[line->level], strlen(priorities[line->level])};
    iov[n++] = (struct iovec){(void *)identifier, sizeof(identifier) - 1};
    add_field(iov, &n, message, sizeof(message), "MESSAGE", line->message);
    add_field(iov, &n, vm, sizeof(vm), "VM", line->vm);
    add_field(iov, &n, transport, sizeof(transport), "TRANSPORT", line->transport);
    add_field(iov, &n, command_id, sizeof(command_id), "COMMAND_ID", line->command_id);
    return sd_journal_sendv(iov, n) < 0 ? QB_EIO : QB_OK;
}
