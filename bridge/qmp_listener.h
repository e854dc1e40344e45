/*
 * qmp_listener.h - listen mode: a Unix socket that QEMUs connect to.
 *
 * QEMU started with
 *   -chardev socket,id=qb,path=<path>,reconnect=5 -mon chardev=qb,mode=control
 * connects to the bridge (and reconnects by itself when the bridge restarts).
 * The listener accepts, learns the peer's pid and uid (SO_PEERCRED) and hands
 * each connection to its owner (the VM manager); it knows nothing about QMP.
 *
 * It accepts only while the owner has room: qb_qmp_listener_pause stops
 * accepting (further QEMUs wait in the kernel's backlog, then retry), so the
 * number of connections that are accepted but not yet named stays bounded.
 */
#ifndef QB_QMP_LISTENER_H
#define QB_QMP_LISTENER_H

#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

struct qb_qmp_listener;

/*
 * One accepted connection: fd (non-blocking, close-on-exec) now belongs to
 * the callee, whatever it does with it. pid and uid are the peer's as the
 * kernel saw them at connect().
 */
typedef void (*qb_qmp_listener_cb)(void *arg, int fd, pid_t pid, uid_t uid);

/*
 * Listens on address ("unix:/path"): a stale socket file left by a dead
 * process is removed; a path another process accepts on, or a file that is not
 * a socket, is refused. The socket gets mode 0660. Returns QB_OK with *out
 * (release with qb_qmp_listener_close), or QB_EINVAL / QB_EIO / QB_ENOMEM with
 * errbuf saying which path and why (errno text).
 */
int qb_qmp_listener_start(uv_loop_t *loop, const char *address, qb_qmp_listener_cb cb, void *arg,
                          struct qb_qmp_listener **out, char *errbuf, size_t errlen);

/* Stops / restarts accepting (back-pressure from the owner). Safe from inside cb. */
void qb_qmp_listener_pause(struct qb_qmp_listener *l);
void qb_qmp_listener_resume(struct qb_qmp_listener *l);

/* The socket's path, borrowed for the listener's lifetime. */
const char *qb_qmp_listener_path(const struct qb_qmp_listener *l);

/*
 * Stops accepting, closes the socket and removes its file if it is still the
 * one this listener bound. Memory goes once libuv has closed the handles (the
 * loop must run on). Connections already handed over are not affected.
 * NULL is fine.
 */
void qb_qmp_listener_close(struct qb_qmp_listener *l);

#endif
