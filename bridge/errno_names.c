/*
 * errno_names.c - QEMU's strerror() text back to a symbolic errno name.
 *
 * QEMU reports BLOCK_IO_ERROR's cause only as text ("reason"), produced by
 * strerror() on the host it runs on, which is the host the bridge runs on.
 * So the reverse table is built from this host's own strerror() rather than
 * from a copy of glibc's texts that could drift. Only the names Linux defines
 * (asm-generic errno-base.h and errno.h) are listed; aliases such as
 * EWOULDBLOCK and EDEADLOCK map to the primary name.
 */
#include "errno_names.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct qb_errno_entry {
    int value;
    const char *name;
};

static const struct qb_errno_entry qb_errno_table[] = {
    {EPERM, "eperm"},
    {ENOENT, "enoent"},
    {ESRCH, "esrch"},
    {EINTR, "eintr"},
    {EIO, "eio"},
    {ENXIO, "enxio"},
    {E2BIG, "e2big"},
    {ENOEXEC, "enoexec"},
    {EBADF, "ebadf"},
    {ECHILD, "echild"},
    {EAGAIN, "eagain"},
    {ENOMEM, "enomem"},
    {EACCES, "eacces"},
    {EFAULT, "efault"},
    {ENOTBLK, "enotblk"},
    {EBUSY, "ebusy"},
    {EEXIST, "eexist"},
    {EXDEV, "exdev"},
    {ENODEV, "enodev"},
    {ENOTDIR, "enotdir"},
    {EISDIR, "eisdir"},
    {EINVAL, "einval"},
    {ENFILE, "enfile"},
    {EMFILE, "emfile"},
    {ENOTTY, "enotty"},
    {ETXTBSY, "etxtbsy"},
    {EFBIG, "efbig"},
    {ENOSPC, "enospc"},
    {ESPIPE, "espipe"},
    {EROFS, "erofs"},
    {EMLINK, "emlink"},
    {EPIPE, "epipe"},
    {EDOM, "edom"},
    {ERANGE, "erange"},
    {EDEADLK, "edeadlk"},
    {ENAMETOOLONG, "enametoolong"},
    {ENOLCK, "enolck"},
    {ENOSYS, "enosys"},
    {ENOTEMPTY, "enotempty"},
    {ELOOP, "eloop"},
    {ENOMSG, "enomsg"},
    {EIDRM, "eidrm"},
    {ECHRNG, "echrng"},
    {EL2NSYNC, "el2nsync"},
    {EL3HLT, "el3hlt"},
    {EL3RST, "el3rst"},
    {ELNRNG, "elnrng"},
    {EUNATCH, "eunatch"},
    {ENOCSI, "enocsi"},
    {EL2HLT, "el2hlt"},
    {EBADE, "ebade"},
    {EBADR, "ebadr"},
    {EXFULL, "exfull"},
    {ENOANO, "enoano"},
    {EBADRQC, "ebadrqc"},
    {EBADSLT, "ebadslt"},
    {EBFONT, "ebfont"},
    {ENOSTR, "enostr"},
    {ENODATA, "enodata"},
    {ETIME, "etime"},
    {ENOSR, "enosr"},
    {ENONET, "enonet"},
    {ENOPKG, "enopkg"},
    {EREMOTE, "eremote"},
    {ENOLINK, "enolink"},
    {EADV, "eadv"},
    {ESRMNT, "esrmnt"},
    {ECOMM, "ecomm"},
    {EPROTO, "eproto"},
    {EMULTIHOP, "emultihop"},
    {EDOTDOT, "edotdot"},
    {EBADMSG, "ebadmsg"},
    {EOVERFLOW, "eoverflow"},
    {ENOTUNIQ, "enotuniq"},
    {EBADFD, "ebadfd"},
    {EREMCHG, "eremchg"},
    {ELIBACC, "elibacc"},
    {ELIBBAD, "elibbad"},
    {ELIBSCN, "elibscn"},
    {ELIBMAX, "elibmax"},
    {ELIBEXEC, "elibexec"},
    {EILSEQ, "eilseq"},
    {ERESTART, "erestart"},
    {ESTRPIPE, "estrpipe"},
    {EUSERS, "eusers"},
    {ENOTSOCK, "enotsock"},
    {EDESTADDRREQ, "edestaddrreq"},
    {EMSGSIZE, "emsgsize"},
    {EPROTOTYPE, "eprototype"},
    {ENOPROTOOPT, "enoprotoopt"},
    {EPROTONOSUPPORT, "eprotonosupport"},
    {ESOCKTNOSUPPORT, "esocktnosupport"},
    {EOPNOTSUPP, "eopnotsupp"},
    {EPFNOSUPPORT, "epfnosupport"},
    {EAFNOSUPPORT, "eafnosupport"},
    {EADDRINUSE, "eaddrinuse"},
    {EADDRNOTAVAIL, "eaddrnotavail"},
    {ENETDOWN, "enetdown"},
    {ENETUNREACH, "enetunreach"},
    {ENETRESET, "enetreset"},
    {ECONNABORTED, "econnaborted"},
    {ECONNRESET, "econnreset"},
    {ENOBUFS, "enobufs"},
    {EISCONN, "eisconn"},
    {ENOTCONN, "enotconn"},
    {ESHUTDOWN, "eshutdown"},
    {ETOOMANYREFS, "etoomanyrefs"},
    {ETIMEDOUT, "etimedout"},
    {ECONNREFUSED, "econnrefused"},
    {EHOSTDOWN, "ehostdown"},
    {EHOSTUNREACH, "ehostunreach"},
    {EALREADY, "ealready"},
    {EINPROGRESS, "einprogress"},
    {ESTALE, "estale"},
    {EUCLEAN, "euclean"},
    {ENOTNAM, "enotnam"},
    {ENAVAIL, "enavail"},
    {EISNAM, "eisnam"},
    {EREMOTEIO, "eremoteio"},
    {EDQUOT, "edquot"},
    {ENOMEDIUM, "enomedium"},
    {EMEDIUMTYPE, "emediumtype"},
    {ECANCELED, "ecanceled"},
    {ENOKEY, "enokey"},
    {EKEYEXPIRED, "ekeyexpired"},
    {EKEYREVOKED, "ekeyrevoked"},
    {EKEYREJECTED, "ekeyrejected"},
    {EOWNERDEAD, "eownerdead"},
    {ENOTRECOVERABLE, "enotrecoverable"},
    {ERFKILL, "erfkill"},
    {EHWPOISON, "ehwpoison"},
};

#define QB_ERRNO_COUNT (sizeof(qb_errno_table) / sizeof(qb_errno_table[0]))
#define QB_ERRNO_TEXT_MAX 96

/* strerror() texts in table order, filled once; never modified afterwards. */
static char qb_errno_texts[QB_ERRNO_COUNT][QB_ERRNO_TEXT_MAX];
static pthread_once_t qb_errno_once = PTHREAD_ONCE_INIT;

static void qb_errno_build(void)
{
    for (size_t i = 0; i < QB_ERRNO_COUNT; i++) {
        /* GNU strerror_r: returns a pointer that may or may not be buf. */
        char buf[QB_ERRNO_TEXT_MAX];
        const char *text = strerror_r(qb_errno_table[i].value, buf, sizeof(buf));

        if (text)
            snprintf(qb_errno_texts[i], sizeof(qb_errno_texts[i]), "%s", text);
    }
}

const char *qb_errno_name(int errnum)
{
    for (size_t i = 0; i < QB_ERRNO_COUNT; i++)
        if (qb_errno_table[i].value == errnum)
            return qb_errno_table[i].name;
    return "unknown";
}

const char *qb_errno_name_from_text(const char *reason)
{
    size_t best_len = 0;
    const char *best = "unknown";

    if (!reason || !*reason)
        return "unknown";
    pthread_once(&qb_errno_once, qb_errno_build);

    for (size_t i = 0; i < QB_ERRNO_COUNT; i++)
        if (qb_errno_texts[i][0] && strcmp(reason, qb_errno_texts[i]) == 0)
            return qb_errno_table[i].name;

    /*
     * Some QEMU paths prefix or suffix the text ("Could not write: No space
     * left on device"); the longest text found wins so that e.g. a short
     * text contained in a longer one never shadows the longer match.
     */
    for (size_t i = 0; i < QB_ERRNO_COUNT; i++) {
        size_t len = strlen(qb_errno_texts[i]);

        if (len > best_len && strcasestr(reason, qb_errno_texts[i])) {
            best_len = len;
            best = qb_errno_table[i].name;
        }
    }
    return best;
}
