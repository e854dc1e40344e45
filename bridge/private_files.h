/*
 * private_files.h - checks on the files and directories that hold the bridge's secrets and state.
 *
 * Two kinds of path come from the configuration and must not be usable by other local users:
 *   - directories the bridge writes (the spool, a state directory): another user who can create
 *     names in them can plant a symlink where the bridge is about to write, and so make it
 *     overwrite any file it may write (as root: any file at all);
 *   - secrets the bridge reads (the command HMAC key, the MQTT password, TLS private keys): if
 *     other users can read them, the secret is not one.
 * Both checks look at the object actually opened (fstat on the fd), so a path swapped between the
 * check and the use changes nothing.
 */
#ifndef QB_PRIVATE_FILES_H
#define QB_PRIVATE_FILES_H

#include <stddef.h>

/*
 * Checks the directory open on dirfd (path only names it in messages): refused when another
 * user owns it (st_uid != geteuid()) or when others may create names in it (mode & 0002,
 * sticky bit or not). Returns QB_OK, or QB_EINVAL with errbuf naming the directory, its owner
 * and mode and what to change; QB_EIO when fstat fails.
 */
int qb_private_dir_check_fd(int dirfd, const char *path, char *errbuf, size_t errlen);

/* The same for a path (opened with O_DIRECTORY, then checked as above). */
int qb_private_dir_check(const char *path, char *errbuf, size_t errlen);

/*
 * Opens the secret file path read-only and checks the opened file's mode: refused when other
 * users may read or write it, a warning logged here when its group may read it (unless the
 * file belongs to another user and its group is the bridge's: root:qmp-bridge 0640). what names
 * the secret in that warning ("commands.hmac_key_file", "transport m1: password_file"); the
 * caller puts its own context before errbuf. A directory is returned open and unchecked:
 * reading it fails with its own error.
 * Returns the fd (the caller closes it), or:
 *   QB_EIO      it cannot be opened (errbuf: "cannot read '<path>': <errno text>")
 *   QB_ECONFIG  others may read or change it (errbuf: "'<path>': mode 0644 lets other users
 *               read it; chmod o-rwx")
 */
int qb_secret_open(const char *what, const char *path, char *errbuf, size_t errlen);

/*
 * For a secret a library opens itself (a TLS key given to libmosquitto or librdkafka by
 * name): qb_secret_open, then close. Same returns, QB_OK instead of an fd.
 */
int qb_secret_check(const char *what, const char *path, char *errbuf, size_t errlen);

#endif
