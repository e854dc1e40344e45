/*
 * private_files.c - ownership and mode checks for the bridge's directories and secret files.
 *
 * The rules are the ones sshd applies to its keys and cron to its spool: a directory the bridge
 * writes belongs to the bridge's user and no one else may create names in it; a secret is not
 * readable by others. The group is left to the administrator (packages give the bridge's group
 * read access to /etc/qmp-bridge), so a group-readable secret is only a warning, and none
 * when that group is how the bridge itself reads a file another user owns.
 */
#include "private_files.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int qb_private_dir_check_fd(int dirfd, const char *path, char *errbuf, size_t errlen)
{
    struct stat st;
    unsigned mode;

    if (fstat(dirfd, &st) < 0) {
        snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        return QB_EIO;
    }
    mode = (unsigned)st.st_mode & 07777;
    if (st.st_uid != geteuid()) {
        snprintf(errbuf, errlen,
                 "%s: owned by uid %u, mode %04o, but the bridge runs as uid %u; another user's "
                 "directory is not safe to write in (chown it to uid %u or choose another)",
                 path, (unsigned)st.st_uid, mode, (unsigned)geteuid(), (unsigned)geteuid());
        return QB_EINVAL;
    }
    if (mode & S_IWOTH) {
        snprintf(errbuf, errlen,
                 "%s: owned by uid %u, mode %04o lets other users create files in it; chmod o-w",
                 path, (unsigned)st.st_uid, mode);
        return QB_EINVAL;
    }
    return QB_OK;
}

int qb_private_dir_check(const char *path, char *errbuf, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

    if (fd < 0) {
        snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        return QB_EIO;
    }
    rc = qb_private_dir_check_fd(fd, path, errbuf, errlen);
    close(fd);
    return rc;
}

int qb_secret_open(const char *what, const char *path, char *errbuf, size_t errlen)
{
    struct stat st;
    unsigned mode;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(errbuf, errlen, "cannot read '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return QB_EIO;
    }
    if (S_ISDIR(st.st_mode))
        return fd;
    mode = (unsigned)st.st_mode & 07777;
    if (mode & (S_IROTH | S_IWOTH)) {
        snprintf(errbuf, errlen, "'%s': mode %04o lets other users %s it; chmod o-rwx", path, mode,
                 mode & S_IROTH ? "read" : "change");
        close(fd);
        return QB_ECONFIG;
    }
    /* root:qmp-bridge 0640 is how a package hands a root-owned secret to the bridge's
     * user: group read is then the bridge's own way in, not an extra reader */
    if ((mode & S_IRGRP) && !(st.st_uid != geteuid() && st.st_gid == getegid()))
        QB_LOG_WARN(NULL,
                    "%s '%s': mode %04o lets its group (gid %u) read it; chmod g-r unless "
                    "that group is meant to",
                    what, path, mode, (unsigned)st.st_gid);
    return fd;
}

int qb_secret_check(const char *what, const char *path, char *errbuf, size_t errlen)
{
    int fd = qb_secret_open(what, path, errbuf, errlen);

    if (fd < 0)
        return fd;
    close(fd);
    return QB_OK;
}
