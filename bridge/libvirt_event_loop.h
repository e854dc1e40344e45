/*
 * libvirt_event_loop.h - libvirt's event loop on the bridge's libuv loop.
 *
 * libvirt's client library needs an event loop for its sockets (events from
 * libvirtd, keepalive) and timers (event dispatch, keepalive). Instead of a
 * second loop thread, the bridge registers an implementation with
 * virEventRegisterImpl that maps watches to uv_poll and timeouts to uv_timer /
 * uv_idle on its one libuv loop.
 *
 * Threads: libvirt calls the add/update/remove functions from any thread (its
 * RPC client disables and re-enables its socket watch from the thread doing a
 * blocking API call). libuv handles are not thread-safe, so every call only
 * records the wanted state in a mutex-protected table and wakes the loop with a
 * uv_async; the loop thread then starts, stops and closes the uv handles. This
 * is done for calls on the loop thread too (one path, no thread check): the
 * change reaches the uv handles within one loop iteration, and before any
 * libvirt callback runs the table is consulted, so an updated or removed watch
 * or timeout never fires after the call returned. The uv_async is unreferenced:
 * active watches and timeouts keep the loop alive, the wake-up alone does not.
 *
 * Watches: several watches may share one fd (libvirt allows it when their
 * event sets do not overlap); uv_poll allows one handle per fd, so each fd has
 * one uv_poll with the union of its watches' events. uv_poll_init makes the fd
 * non-blocking (libvirt's sockets already are). A watch with events 0 stays
 * but is not polled. ERROR and HANGUP are reported to watches with events != 0:
 * a failed poll (status < 0) as VIR_EVENT_HANDLE_ERROR, after which the fd is
 * not polled again until a watch on it is updated; UV_DISCONNECT (the peer
 * closed its end, asked for when a watch wants READABLE) as HANGUP.
 *
 * Timeouts: frequency > 0 is a repeating uv_timer of that many ms, restarted
 * by every update (as libvirt's own poll loop does); 0 is a uv_idle, which
 * runs the callback once per loop iteration and keeps the loop from blocking
 * (a re-armed 0 ms uv_timer would run again within the same timer pass in
 * libuv 1.44 and never let the loop poll); -1 is disabled, and nothing runs or
 * spins.
 *
 * Removal: the free callback (ff) libvirt passes is called later from the loop
 * thread on a clean stack, never inside the remove call (libvirt holds its
 * locks there), and only after the uv handle is closed, or, for an fd still
 * watched by another watch, after the poll mask no longer includes it.
 *
 * All callbacks run on the loop thread with the table unlocked, so they may
 * call back into libvirt and these functions.
 */
#ifndef QB_LIBVIRT_EVENT_LOOP_H
#define QB_LIBVIRT_EVENT_LOOP_H

#include <uv.h>

/*
 * Registers the implementation with libvirt, running on loop (borrowed; it must
 * outlive the shutdown below). Call it on the loop's thread before the first
 * virConnectOpen. libvirt keeps the first implementation registered in a
 * process (a later virEventRegisterImpl is ignored with a warning) and cannot
 * unregister it, so this is once per process: a second call with the same
 * loop returns QB_OK and does nothing, with another loop QB_EBUSY, after
 * qb_libvirt_event_loop_shutdown QB_ECLOSED. Nothing else in the process may
 * register one (virEventRegisterDefaultImpl): when another was first, this
 * finds out with a probe timeout and returns QB_EEXIST (shut down).
 * Returns QB_OK, QB_EBUSY, QB_ECLOSED, QB_EEXIST, QB_EINVAL, or QB_EIO when
 * the uv_async that wakes the loop cannot be made.
 */
int qb_libvirt_event_loop_install(uv_loop_t *loop);

/*
 * Closes every uv handle of the implementation (the uv_async included), on
 * the loop's thread; run the loop afterwards until the close callbacks ran.
 * Watches and timeouts already removed get their free callbacks as usual.
 * Call it after every libvirt connection is closed: libvirt cannot unregister
 * the implementation, so watches or timeouts still registered never fire
 * again, their free callbacks are never called (libvirt may still use their
 * data), a later remove of them returns 0, and a later add returns -1.
 * Does nothing when not installed or already shut down.
 */
void qb_libvirt_event_loop_shutdown(void);

#endif
