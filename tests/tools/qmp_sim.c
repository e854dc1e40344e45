/*
 * qmp_sim.c - one libuv process that plays N QEMU 7.2 QMP monitors at once.
 *
 * Load and storm tests need thousands of QMP peers; thousands of real QEMUs
 * (or Python peers) do not fit on a test machine. Every simulated VM here is a
 * listening socket plus a few hundred bytes of state, and behaves like
 * `qemu-system-x86_64 -qmp unix:PATH,server=on,wait=off` with one data disk:
 *
 *   - one client at a time: a second connection waits in the listen backlog
 *     (not accepted) until the first one ends, as QEMU's chardev does;
 *   - the real greeting at once, then qmp_capabilities; every other command
 *     before it gets QEMU's CommandNotFound "Expecting capabilities ...";
 *   - query-status, query-block, query-block-jobs, query-colo-status,
 *     query-name, query-uuid, query-version, query-jobs, block_resize, cont,
 *     stop answered as 7.2 answers them (lines in qmp_sim_lines.h, captured
 *     from a real QEMU); unknown commands get CommandNotFound "The command X
 *     has not been found"; replies echo "id" and end in "\r\n";
 *   - a run state that follows commands and events: stop -> STOP + paused,
 *     cont -> RESUME + running and io-status ok (from shutdown it is refused),
 *     block_resize changes query-block's virtual-size.
 *
 * Event scripts. With --rate R (script steps per second per VM) or --flat-out,
 * each VM with a negotiated session walks the --mix list round-robin, one step
 * at a time, until --events steps were taken (default: forever); with
 * --start-ready N no VM starts before N sessions were negotiated at once. A step sends
 * the lines QEMU would send for it, each stamped with the wall-clock time it
 * is written (QEMU stamps events the same way, so a consumer can compute
 * latency from "timestamp"):
 *   io_error   BLOCK_IO_ERROR nospace (action stop), then STOP if running;
 *              run state io-error, io-status nospace
 *   eio        the same with "Input/output error" and no nospace; io-status failed
 *   stop       STOP if running; run state paused
 *   resume     RESUME if not running (as after someone's cont); io-status ok
 *   job_error  BLOCK_JOB_ERROR of backup job backup0 (action report); the job
 *              then shows in query-block-jobs
 *   colo_exit  COLO_EXIT primary/request; query-colo-status says so afterwards
 *   reset      RESET guest/guest-reset
 * A step that does not fit the run state sends only the lines that would
 * really appear (no STOP while paused). The script position survives
 * reconnects and nothing is sent while no session is negotiated, so a test
 * knows exactly what was sent (--trace FILE records every event line).
 *
 * Faults (--fault F, every --fault-every N steps of a VM, default 10):
 *   garbage     a non-JSON line after the step
 *   stall       stop reading and sending for --stall-ms (default 3000)
 *   disconnect  half an event line, then the connection is closed
 *   slow-read   (every session, always) after each read, read nothing for
 *               --slow-ms (default 200): commands pile up at the client while
 *               events keep flowing
 *
 * Scale and fairness. Idle VMs cost no timer: one repeating 10 ms timer runs
 * only while some VM has script steps due (walking only those VMs) or a fault
 * pause to end; flat-out mode uses one idle handle instead, sending at most
 * FLAT_BATCH steps per VM per loop iteration so reads and accepts still run. A
 * VM whose socket has more than WQ_HIGH bytes queued takes no further steps
 * until its queue drains below WQ_LOW, so a slow reader slows its VM down.
 * RLIMIT_NOFILE is raised at start (to the hard limit, or beyond it when
 * privileged and 2 descriptors per VM need more).
 *
 * Signals:
 *   SIGUSR1  close every session at once, keep listening (reconnect storm)
 *   SIGUSR2  toggle a stall of everything: no reads, no events, no accepts
 *   SIGHUP   write the --stats file now
 *   SIGTERM/SIGINT  write the stats file, close and free everything, exit 0
 *
 * Stats file (JSON, written atomically by rename, on SIGHUP and at exit;
 * "generation" counts the writes so a reader can wait for a fresh one):
 * sessions accepted / current / ready, the most sessions at once that were
 * connected but had not yet sent qmp_capabilities (the client's connect
 * concurrency; also since the last SIGUSR1), commands by name, events and
 * steps sent, faults, bytes both ways, and per VM its session and event counts.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "qmp_sim_lines.h"

#define SIM_USAGE                                                                                  \
    "usage: qmp_sim --dir D --vms N [options]\n"                                                   \
    "  --dir D             directory of the unix sockets D/<prefix><0001..N>.qmp\n"                \
    "  --vms N             number of simulated QEMUs\n"                                            \
    "  --prefix P          VM name prefix (default vm-)\n"                                         \
    "  --tcp-port-base P   listen on 127.0.0.1:P+i (i = 0..N-1) instead of unix sockets\n"        \
    "  --rate R            script steps per second per VM\n"                                       \
    "  --flat-out          script steps as fast as each socket takes them\n"                       \
    "  --phase P           rate mode: spread (default) starts each VM at its own point of the\n"   \
    "                      period, as independent VMs are; aligned starts them together (bursts)\n" \
    "  --events N          script steps per VM, then idle (default: no end)\n"                     \
    "  --start-ready N     no script step until N sessions are negotiated at once (a flood\n"     \
    "                      that starts with the whole fleet in; default 0: at once)\n"           \
    "  --mix LIST          steps, round-robin: io_error,eio,stop,resume,job_error,colo_exit,reset\n" \
    "                      (default io_error,resume)\n"                                            \
    "  --fault F           garbage | stall | disconnect | slow-read\n"                             \
    "  --fault-every N     steps of a VM between faults (default 10)\n"                            \
    "  --stall-ms MS       length of a stall fault (default 3000)\n"                               \
    "  --slow-ms MS        read pause of slow-read (default 200)\n"                                \
    "  --disk-size BYTES   initial virtual-size of each disk (default 67108864)\n"                 \
    "  --stats FILE        JSON stats, written on SIGHUP and at exit\n"                            \
    "  --ready-file FILE   written (our pid) once every socket listens\n"                          \
    "  --trace FILE        every event line sent, as '<vm> <line>' (small runs only)\n"           \
    "  --handshake-log FILE  '<monotonic ns> <+1|-1>' per session entering/leaving its\n"        \
    "                      handshake (merge several simulators' logs for the true peak)\n"     \
    "  --log-level L       error | warn | info | debug (default info)\n"                           \
    "signals: USR1 drop all sessions, USR2 toggle stall, HUP write stats, TERM/INT exit\n"

enum {
    TICK_MS = 1, /* the one timer's period: steps of a rate-mode VM leave within 1 ms of their due
                  * time (a 10 ms tick sent each tick's steps of all VMs as one burst) */
    FLAT_BATCH = 32,          /* steps per VM per loop iteration in flat-out mode */
    RATE_BATCH = 256,         /* steps per VM per tick at most in rate mode */
    WQ_HIGH = 64 * 1024,      /* queued bytes at which a VM stops taking steps */
    WQ_LOW = 16 * 1024,       /* ... and at which it starts again */
    MAX_LINE = 1024 * 1024,   /* longest command line kept */
    READ_BUF = 64 * 1024,     /* the one read buffer all sessions share */
    MAX_MIX = 64,
};

enum sim_run { RUN_RUNNING, RUN_PAUSED, RUN_IO_ERROR };
static const char *const run_names[] = {"running", "paused", "io-error"};

enum sim_io { IO_OK, IO_NOSPACE, IO_FAILED };
static const char *const io_names[] = {"ok", "nospace", "failed"};

enum sim_fault { FAULT_NONE, FAULT_GARBAGE, FAULT_STALL, FAULT_DISCONNECT, FAULT_SLOW_READ };
static const char *const fault_names[] = {"none", "garbage", "stall", "disconnect", "slow-read"};

/* A stream of either family: a VM listens on one and its session uses the same. */
union sim_stream {
    uv_handle_t h;
    uv_stream_t s;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
};

struct sim_vm;

/* One client connection. Owned by the loop from accept to its close callback. */
struct sim_session {
    union sim_stream io;
    struct sim_vm *vm;
    char *partial; /* owned: the start of a line whose newline has not come yet */
    size_t partial_len, partial_cap;
    bool ready;     /* qmp_capabilities succeeded */
    bool reading;   /* uv_read_start is in effect */
    bool closing;   /* uv_close called; only callbacks remain */
    bool skip_line; /* the current line outgrew MAX_LINE: drop it up to its newline */
};

/* One simulated QEMU. All of them live in one array owned by struct sim. */
struct sim_vm {
    union sim_stream listener;
    uint32_t index;
    uint8_t run, io;
    bool shutdown; /* run state shutdown: cont refused (never scripted today, kept for cont) */
    bool colo_exited, job;
    bool accept_pending; /* a client waits in the backlog for the current one to end */
    bool write_blocked;  /* the session's write queue is over WQ_HIGH */
    bool in_active, in_timed;
    bool timed_steps; /* the pause stops script steps too (stall), not only reads */
    uint64_t disk_size;
    uint64_t steps_done, events_sent;
    uint32_t sessions;
    double credit;      /* rate mode: steps owed */
    uint64_t resume_at; /* in_timed: uv_now() at which a fault pause ends */
    struct sim_session *sess;
    struct sim_vm *act_prev, *act_next; /* VMs that may take script steps now */
    struct sim_vm *tm_prev, *tm_next;   /* VMs in a fault pause */
};

/* Growable output buffer; every reply and event of one callback is gathered here and written
 * to its session in one go. */
struct sim_buf {
    char *p;
    size_t len, cap;
    bool oom;
};

/* A write libuv could not finish at once; owns the unwritten bytes. */
struct sim_wreq {
    uv_write_t req;
    struct sim_session *sess;
    char data[];
};

struct sim {
    uv_loop_t *loop;
    /* options */
    const char *dir, *prefix, *stats_path, *ready_path, *trace_path, *handshake_log_path;
    uint32_t nvms;
    int tcp_port_base;
    double rate;
    bool flat_out;
    bool phase_aligned; /* rate mode: every VM starts its period at activation (bursts) */
    int64_t events_limit; /* -1: no end */
    uint32_t start_ready;  /* --start-ready: steps wait until this many sessions are ready */
    bool started;          /* ... which happened (latched: later drops do not stop the script) */
    uint8_t mix[MAX_MIX];
    size_t mix_len;
    enum sim_fault fault;
    uint32_t fault_every, stall_ms, slow_ms;
    uint64_t disk_size;
    /* state */
    struct sim_vm *vms;
    struct sim_vm *act_head, *tm_head;
    uv_timer_t tick;
    uv_idle_t idle;
    uv_signal_t sig[5];
    bool tick_on, idle_on, stalled, stopping;
    uint64_t last_tick;
    struct sim_buf out;
    char rbuf[READ_BUF];
    FILE *trace;
    FILE *handshake_log;
    /* stats */
    uint64_t accepted, pre_caps_max, pre_caps_max_drop, ready_max, events_sent, steps_sent,
        faults, bytes_in, bytes_out, parse_errors, drops, generation;
    uint32_t cur_sessions, pre_caps, ready;
    uint64_t started_ms;
};

static struct sim g_sim; /* one per process: signal and libuv callbacks reach it here */

/*
 * A session entered (+1: accepted) or left (-1: qmp_capabilities, or closed
 * before it) its handshake. With --handshake-log each change is one line
 * '<CLOCK_MONOTONIC ns> <+1|-1>': the clock is the machine's, so the logs of
 * several simulators merge into the client's true connect concurrency (one
 * simulator's peak cannot see the others').
 */
static void sim_pre_caps_change(int delta)
{
    g_sim.pre_caps += (uint32_t)delta;
    if (g_sim.handshake_log)
        fprintf(g_sim.handshake_log, "%llu %+d\n", (unsigned long long)uv_hrtime(), delta);
}

/* ---- small helpers -------------------------------------------------------------------------- */

static void vm_name(const struct sim_vm *vm, char *buf, size_t size)
{
    snprintf(buf, size, "%s%04u", g_sim.prefix, vm->index + 1);
}

static int buf_reserve(struct sim_buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_append(struct sim_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_printf(struct sim_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct sim_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (!b->p || (size_t)n >= b->cap - b->len) {
        if (buf_reserve(b, (size_t)n) < 0)
            return;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* Returns a new JSON string literal (quotes included) for text, or NULL. Caller frees. */
static char *json_quote(const char *text)
{
    json_t *s = json_string(text);
    char *out = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;

    json_decref(s);
    return out;
}

static void wall_clock(long long *sec, long *usec)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = (long long)ts.tv_sec;
    *usec = ts.tv_nsec / 1000;
}

/* ---- scheduling: which VMs take steps, and the one timer / idle handle -------------------- */

static void sim_tick(uv_timer_t *t);
static void sim_idle(uv_idle_t *h);
static void sess_update_reading(struct sim_session *s);

static bool vm_script_left(const struct sim_vm *vm)
{
    if ((g_sim.rate <= 0 && !g_sim.flat_out) || !g_sim.started)
        return false;
    return g_sim.events_limit < 0 || vm->steps_done < (uint64_t)g_sim.events_limit;
}

static bool vm_may_step(const struct sim_vm *vm)
{
    return vm->sess && vm->sess->ready && !vm->sess->closing && !vm->write_blocked &&
           !(vm->in_timed && vm->timed_steps) && !g_sim.stalled && !g_sim.stopping && vm_script_left(vm);
}

/* Starts or stops the timer and the idle handle to match the lists: nothing runs while idle. */
static void sim_update_drivers(void)
{
    bool want_tick = !g_sim.stopping && (g_sim.tm_head || (g_sim.rate > 0 && g_sim.act_head));
    bool want_idle = !g_sim.stopping && g_sim.flat_out && g_sim.act_head;

    if (want_tick && !g_sim.tick_on) {
        g_sim.last_tick = uv_now(g_sim.loop);
        uv_timer_start(&g_sim.tick, sim_tick, TICK_MS, TICK_MS);
    } else if (!want_tick && g_sim.tick_on) {
        uv_timer_stop(&g_sim.tick);
    }
    g_sim.tick_on = want_tick;
    if (want_idle && !g_sim.idle_on)
        uv_idle_start(&g_sim.idle, sim_idle);
    else if (!want_idle && g_sim.idle_on)
        uv_idle_stop(&g_sim.idle);
    g_sim.idle_on = want_idle;
}

/* Puts vm on or takes it off the active list after anything that changes vm_may_step. */
static void vm_update_active(struct sim_vm *vm)
{
    bool want = vm_may_step(vm);

    if (want && !vm->in_active) {
        /* Independent VMs do not tick together: without a phase, every VM that became active
         * in the same tick would step in the same tick for ever, and a steady 2 events/s
         * per VM would arrive as one burst of all of them every 500 ms. The golden-ratio
         * sequence spreads phases evenly over the period and is the same in every run. */
        vm->credit = g_sim.phase_aligned ? 0 : fmod(vm->index * 0.6180339887498949, 1.0);
        vm->act_prev = NULL;
        vm->act_next = g_sim.act_head;
        if (g_sim.act_head)
            g_sim.act_head->act_prev = vm;
        g_sim.act_head = vm;
        vm->in_active = true;
    } else if (!want && vm->in_active) {
        if (vm->act_prev)
            vm->act_prev->act_next = vm->act_next;
        else
            g_sim.act_head = vm->act_next;
        if (vm->act_next)
            vm->act_next->act_prev = vm->act_prev;
        vm->act_prev = vm->act_next = NULL;
        vm->in_active = false;
    }
    sim_update_drivers();
}

static void vm_untime(struct sim_vm *vm)
{
    if (!vm->in_timed)
        return;
    if (vm->tm_prev)
        vm->tm_prev->tm_next = vm->tm_next;
    else
        g_sim.tm_head = vm->tm_next;
    if (vm->tm_next)
        vm->tm_next->tm_prev = vm->tm_prev;
    vm->tm_prev = vm->tm_next = NULL;
    vm->in_timed = false;
}

/* A fault pause: no reads for ms, and no script steps either when steps is set. */
static void vm_pause(struct sim_vm *vm, uint32_t ms, bool steps)
{
    vm->resume_at = uv_now(g_sim.loop) + ms;
    vm->timed_steps = steps;
    if (!vm->in_timed) {
        vm->tm_prev = NULL;
        vm->tm_next = g_sim.tm_head;
        if (g_sim.tm_head)
            g_sim.tm_head->tm_prev = vm;
        g_sim.tm_head = vm;
        vm->in_timed = true;
    }
    if (vm->sess)
        sess_update_reading(vm->sess);
    vm_update_active(vm);
}

/* ---- sessions ------------------------------------------------------------------------------ */

static void vm_accept(struct sim_vm *vm);

static void sess_on_closed(uv_handle_t *h)
{
    struct sim_session *s = h->data;
    struct sim_vm *vm = s->vm;

    free(s->partial);
    free(s);
    /* QEMU takes the next waiting client once the previous one is gone. */
    if (!g_sim.stopping && !g_sim.stalled && vm->accept_pending && !vm->sess) {
        vm->accept_pending = false;
        vm_accept(vm);
    }
}

static void sess_close(struct sim_session *s, const char *why)
{
    struct sim_vm *vm = s->vm;
    char name[64];

    if (s->closing)
        return;
    s->closing = true;
    vm_name(vm, name, sizeof name);
    QB_LOG_DEBUG(name, "session closed: %s", why);
    g_sim.cur_sessions--;
    if (s->ready)
        g_sim.ready--;
    else
        sim_pre_caps_change(-1);
    if (vm->sess == s)
        vm->sess = NULL;
    vm->write_blocked = false;
    vm_untime(vm);
    vm_update_active(vm);
    uv_close(&s->io.h, sess_on_closed);
}

static void sess_on_write(uv_write_t *req, int status)
{
    struct sim_wreq *w = (struct sim_wreq *)req;
    struct sim_session *s = w->sess;

    free(w);
    if (s->closing)
        return;
    if (status < 0) {
        sess_close(s, uv_strerror(status));
        return;
    }
    if (s->vm->write_blocked && uv_stream_get_write_queue_size(&s->io.s) <= WQ_LOW) {
        s->vm->write_blocked = false;
        vm_update_active(s->vm);
    }
}

/* Writes len bytes to s: what the socket takes now directly, the rest through a queued
 * write that owns a copy. Errors close the session. */
static void sess_send(struct sim_session *s, const char *data, size_t len)
{
    size_t off = 0;
    uv_buf_t b;
    int n;

    if (s->closing || len == 0)
        return;
    g_sim.bytes_out += len;
    b = uv_buf_init((char *)data, (unsigned int)len);
    n = uv_try_write(&s->io.s, &b, 1);
    if (n >= 0)
        off = (size_t)n;
    else if (n != UV_EAGAIN && n != UV_ENOSYS) {
        sess_close(s, uv_strerror(n));
        return;
    }
    if (off == len)
        return;
    struct sim_wreq *w = malloc(sizeof *w + (len - off));
    if (!w) {
        sess_close(s, "out of memory");
        return;
    }
    memcpy(w->data, data + off, len - off);
    w->sess = s;
    b = uv_buf_init(w->data, (unsigned int)(len - off));
    n = uv_write(&w->req, &s->io.s, &b, 1, sess_on_write);
    if (n < 0) {
        free(w);
        sess_close(s, uv_strerror(n));
        return;
    }
    if (!s->vm->write_blocked && uv_stream_get_write_queue_size(&s->io.s) > WQ_HIGH) {
        s->vm->write_blocked = true;
        vm_update_active(s->vm);
    }
}

/* Sends what was gathered in g_sim.out to s (if any) and empties it. */
static void sess_flush(struct sim_session *s)
{
    if (g_sim.out.oom) {
        QB_LOG_ERR(NULL, "out of memory building output; %zu bytes dropped", g_sim.out.len);
        if (s)
            sess_close(s, "out of memory");
    } else if (s) {
        sess_send(s, g_sim.out.p, g_sim.out.len);
    }
    g_sim.out.len = 0;
    g_sim.out.oom = false;
}

/* ---- events and script steps --------------------------------------------------------------- */

/* Appends one event line stamped now. data: JSON text or NULL (STOP, RESUME). */
static void vm_event(struct sim_vm *vm, const char *event, const char *data)
{
    size_t start = g_sim.out.len;
    long long sec;
    long usec;

    wall_clock(&sec, &usec);
    buf_printf(&g_sim.out, QSL_EV_HEAD, sec, usec, event);
    if (data)
        buf_printf(&g_sim.out, QSL_EV_DATA_TAIL, data);
    else
        buf_printf(&g_sim.out, QSL_EV_TAIL);
    vm->events_sent++;
    g_sim.events_sent++;
    if (g_sim.trace && !g_sim.out.oom) {
        char name[64];

        vm_name(vm, name, sizeof name);
        /* The line without its "\r\n". */
        fprintf(g_sim.trace, "%s %.*s\n", name, (int)(g_sim.out.len - start - 2),
                g_sim.out.p + start);
    }
}

static void vm_block_names(const struct sim_vm *vm, char *node, size_t size)
{
    (void)vm;
    snprintf(node, size, "#block137");
}

static void vm_go_running(struct sim_vm *vm)
{
    vm->run = RUN_RUNNING;
    vm->io = IO_OK; /* cont resets io-status */
}

static void step_io_error(struct sim_vm *vm, bool nospace)
{
    char data[512], node[32];

    vm_block_names(vm, node, sizeof node);
    if (nospace)
        snprintf(data, sizeof data, QSL_IO_ERROR_NOSPACE, "data", node);
    else
        snprintf(data, sizeof data, QSL_IO_ERROR_EIO, "data", node);
    vm_event(vm, "BLOCK_IO_ERROR", data);
    vm->io = nospace ? IO_NOSPACE : IO_FAILED;
    if (vm->run == RUN_RUNNING) {
        vm_event(vm, "STOP", NULL);
        vm->run = RUN_IO_ERROR;
    }
}

static void step_nospace(struct sim_vm *vm) { step_io_error(vm, true); }
static void step_eio(struct sim_vm *vm) { step_io_error(vm, false); }

static void step_stop(struct sim_vm *vm)
{
    if (vm->run == RUN_RUNNING) {
        vm_event(vm, "STOP", NULL);
        vm->run = RUN_PAUSED;
    }
}

static void step_resume(struct sim_vm *vm)
{
    if (vm->run != RUN_RUNNING) {
        vm_event(vm, "RESUME", NULL);
        vm_go_running(vm);
    }
}

static void step_job_error(struct sim_vm *vm)
{
    vm_event(vm, "BLOCK_JOB_ERROR", QSL_JOB_ERROR);
    vm->job = true;
}

static void step_colo_exit(struct sim_vm *vm)
{
    vm_event(vm, "COLO_EXIT", QSL_COLO_EXIT);
    vm->colo_exited = true;
}

static void step_reset(struct sim_vm *vm) { vm_event(vm, "RESET", QSL_RESET); }

static const struct {
    const char *name;
    void (*run)(struct sim_vm *vm);
} step_table[] = {
    {"io_error", step_nospace}, {"eio", step_eio},             {"stop", step_stop},
    {"resume", step_resume},    {"job_error", step_job_error}, {"colo_exit", step_colo_exit},
    {"reset", step_reset},
};
#define STEP_COUNT (sizeof step_table / sizeof step_table[0])

/* Applies the configured fault after a step; returns true when the VM must take no more
 * steps in this batch. */
static bool vm_fault(struct sim_vm *vm)
{
    struct sim_session *s = vm->sess;

    g_sim.faults++;
    switch (g_sim.fault) {
    case FAULT_GARBAGE:
        buf_printf(&g_sim.out, QSL_GARBAGE);
        return false;
    case FAULT_STALL:
        sess_flush(s);
        vm_pause(vm, g_sim.stall_ms, true);
        return true;
    case FAULT_DISCONNECT: {
        long long sec;
        long usec;
        char line[160];
        int n;

        wall_clock(&sec, &usec);
        n = snprintf(line, sizeof line, QSL_EV_HEAD QSL_EV_TAIL, sec, usec, "STOP");
        buf_append(&g_sim.out, line, (size_t)n / 2);
        sess_flush(s);
        sess_close(s, "disconnect fault");
        return true;
    }
    default:
        return false;
    }
}

/* Takes up to max script steps for vm and writes them in one go. */
static void vm_run_steps(struct sim_vm *vm, unsigned max)
{
    struct sim_session *s = vm->sess;
    unsigned i;

    for (i = 0; i < max && vm_may_step(vm); i++) {
        step_table[g_sim.mix[vm->steps_done % g_sim.mix_len]].run(vm);
        vm->steps_done++;
        g_sim.steps_sent++;
        if (g_sim.fault != FAULT_NONE && g_sim.fault != FAULT_SLOW_READ &&
            vm->steps_done % g_sim.fault_every == 0 && vm_fault(vm))
            break;
    }
    if (vm->sess == s && !s->closing)
        sess_flush(s);
    else
        sess_flush(NULL);
    vm_update_active(vm);
}

static void sim_tick(uv_timer_t *t)
{
    uint64_t now = uv_now(t->loop);
    double owed = g_sim.rate * (double)(now - g_sim.last_tick) / 1000.0;
    struct sim_vm *vm, *next;

    g_sim.last_tick = now;
    for (vm = g_sim.tm_head; vm; vm = next) {
        next = vm->tm_next;
        if (vm->resume_at <= now) {
            vm_untime(vm);
            if (vm->sess)
                sess_update_reading(vm->sess);
            vm_update_active(vm);
        }
    }
    if (g_sim.rate <= 0)
        return;
    for (vm = g_sim.act_head; vm; vm = next) {
        next = vm->act_next;
        vm->credit += owed;
        if (vm->credit > g_sim.rate + 1) /* owe at most a second's worth after a slow spell */
            vm->credit = g_sim.rate + 1;
        if (vm->credit >= 1) {
            unsigned n = vm->credit > RATE_BATCH ? RATE_BATCH : (unsigned)vm->credit;

            vm->credit -= n;
            vm_run_steps(vm, n);
        }
    }
}

static void sim_idle(uv_idle_t *h)
{
    struct sim_vm *vm, *next;

    (void)h;
    for (vm = g_sim.act_head; vm; vm = next) {
        next = vm->act_next;
        vm_run_steps(vm, FLAT_BATCH);
    }
}

/* ---- commands ------------------------------------------------------------------------------ */

/* Appends a success reply. ret: JSON text of the return value; id: serialised id or NULL. */
static void reply_ok(const char *id, const char *ret)
{
    if (id)
        buf_printf(&g_sim.out, QSL_RETURN_ID, ret, id);
    else
        buf_printf(&g_sim.out, QSL_RETURN, ret);
}

/* Appends an error reply with desc (plain text, quoted here). */
static void reply_err(const char *id, const char *cls, const char *desc)
{
    char *q = json_quote(desc);

    if (!q) {
        g_sim.out.oom = true;
        return;
    }
    if (id)
        buf_printf(&g_sim.out, QSL_ERROR_ID, id, cls, q);
    else
        buf_printf(&g_sim.out, QSL_ERROR, cls, q);
    free(q);
}

static void cmd_caps(struct sim_session *s, json_t *args, const char *id)
{
    (void)args;
    if (s->ready) {
        reply_err(id, "CommandNotFound", QSL_DESC_CAPS_DONE);
        return;
    }
    s->ready = true;
    sim_pre_caps_change(-1);
    if (++g_sim.ready > g_sim.ready_max)
        g_sim.ready_max = g_sim.ready;
    reply_ok(id, "{}");
    if (!g_sim.started && g_sim.ready >= g_sim.start_ready) {
        /* A throughput window then compares like with like: every VM in, none still
         * connecting while the others flood (how many made it in varied from run to run). */
        g_sim.started = true;
        QB_LOG_INFO(NULL, "qmp_sim: %u sessions ready, scripts start", g_sim.ready);
        for (uint32_t i = 0; i < g_sim.nvms; i++)
            vm_update_active(&g_sim.vms[i]);
        return;
    }
    vm_update_active(s->vm);
}

static void cmd_query_status(struct sim_session *s, json_t *args, const char *id)
{
    char ret[128];

    (void)args;
    snprintf(ret, sizeof ret, QSL_STATUS, s->vm->shutdown ? "shutdown" : run_names[s->vm->run],
             s->vm->run == RUN_RUNNING ? "true" : "false");
    reply_ok(id, ret);
}

static void cmd_query_block(struct sim_session *s, json_t *args, const char *id)
{
    char ret[2048], node[32], name[64], file[96];

    (void)args;
    vm_block_names(s->vm, node, sizeof node);
    vm_name(s->vm, name, sizeof name);
    snprintf(file, sizeof file, "/var/lib/qmp-sim/%s.raw", name);
    snprintf(ret, sizeof ret, QSL_BLOCK, io_names[s->vm->io], "data",
             (unsigned long long)s->vm->disk_size, file, node, file);
    reply_ok(id, ret);
}

static void cmd_query_block_jobs(struct sim_session *s, json_t *args, const char *id)
{
    (void)args;
    reply_ok(id, s->vm->job ? QSL_BLOCK_JOBS_BACKUP : "[]");
}

static void cmd_query_colo(struct sim_session *s, json_t *args, const char *id)
{
    (void)args;
    reply_ok(id, s->vm->colo_exited ? QSL_COLO_AFTER_EXIT : QSL_COLO_NONE);
}

static void cmd_query_name(struct sim_session *s, json_t *args, const char *id)
{
    (void)s, (void)args;
    reply_ok(id, "{}"); /* no -name given, as in the captured QEMU */
}

static void cmd_query_uuid(struct sim_session *s, json_t *args, const char *id)
{
    (void)s, (void)args;
    reply_ok(id, QSL_UUID);
}

static void cmd_query_version(struct sim_session *s, json_t *args, const char *id)
{
    (void)s, (void)args;
    reply_ok(id, QSL_VERSION);
}

static void cmd_query_jobs(struct sim_session *s, json_t *args, const char *id)
{
    (void)s, (void)args;
    reply_ok(id, "[]");
}

/* QEMU sends the event before the reply; cont/stop in the state already reached is a no-op. */
static void cmd_cont(struct sim_session *s, json_t *args, const char *id)
{
    (void)args;
    if (s->vm->shutdown) {
        reply_err(id, "GenericError", QSL_DESC_CONT_SHUTDOWN);
        return;
    }
    if (s->vm->run != RUN_RUNNING) {
        vm_event(s->vm, "RESUME", NULL);
        vm_go_running(s->vm);
    }
    reply_ok(id, "{}");
}

static void cmd_stop(struct sim_session *s, json_t *args, const char *id)
{
    (void)args;
    if (s->vm->run == RUN_RUNNING) {
        vm_event(s->vm, "STOP", NULL);
        s->vm->run = RUN_PAUSED;
    }
    reply_ok(id, "{}");
}

static void cmd_block_resize(struct sim_session *s, json_t *args, const char *id)
{
    const char *dev = json_string_value(json_object_get(args, "device"));
    const char *node = json_string_value(json_object_get(args, "node-name"));
    json_t *size = json_object_get(args, "size");
    char ours[32], desc[512];

    vm_block_names(s->vm, ours, sizeof ours);
    if (!json_is_integer(size)) {
        snprintf(desc, sizeof desc, QSL_DESC_MISSING_PARAM, "size");
        reply_err(id, "GenericError", desc);
        return;
    }
    if (!((dev && strcmp(dev, "data") == 0) || (node && strcmp(node, ours) == 0))) {
        snprintf(desc, sizeof desc, QSL_DESC_NO_DEVICE, dev ? dev : "", node ? node : "");
        reply_err(id, "GenericError", desc);
        return;
    }
    if (json_integer_value(size) < 0) {
        reply_err(id, "GenericError", "Parameter 'size' expects a >0 size");
        return;
    }
    /* io-status stays nospace until cont, as in QEMU. */
    s->vm->disk_size = (uint64_t)json_integer_value(size);
    reply_ok(id, "{}");
}

static const struct {
    const char *name;
    void (*run)(struct sim_session *s, json_t *args, const char *id);
    bool takes_args;
} cmd_table[] = {
    {"qmp_capabilities", cmd_caps, true},
    {"query-status", cmd_query_status, false},
    {"query-block", cmd_query_block, false},
    {"query-block-jobs", cmd_query_block_jobs, false},
    {"query-colo-status", cmd_query_colo, false},
    {"query-name", cmd_query_name, false},
    {"query-uuid", cmd_query_uuid, false},
    {"query-version", cmd_query_version, false},
    {"query-jobs", cmd_query_jobs, false},
    {"cont", cmd_cont, false},
    {"stop", cmd_stop, false},
    {"block_resize", cmd_block_resize, true},
};
#define CMD_COUNT (sizeof cmd_table / sizeof cmd_table[0])
static uint64_t cmd_counts[CMD_COUNT + 1]; /* the last one counts unknown commands */

/* Answers one command object. id: its serialised "id" or NULL. */
static void sess_command(struct sim_session *s, json_t *msg, const char *id)
{
    const char *key, *name;
    json_t *val, *args;
    char desc[512];
    size_t i;

    json_object_foreach(msg, key, val) {
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id") &&
            strcmp(key, "control") && strcmp(key, "exec-oob")) {
            snprintf(desc, sizeof desc, QSL_DESC_UNEXPECTED_MEMBER, key);
            reply_err(id, "GenericError", desc);
            return;
        }
    }
    name = json_string_value(json_object_get(msg, "execute"));
    if (!name)
        name = json_string_value(json_object_get(msg, "exec-oob"));
    if (!name) {
        reply_err(id, "GenericError", QSL_DESC_NO_EXECUTE);
        return;
    }
    for (i = 0; i < CMD_COUNT && strcmp(cmd_table[i].name, name); i++)
        ;
    cmd_counts[i]++;
    if (!s->ready && i != 0) {
        reply_err(id, "CommandNotFound", QSL_DESC_NEED_CAPS);
        return;
    }
    if (i == CMD_COUNT) {
        snprintf(desc, sizeof desc, QSL_DESC_NOT_FOUND, name);
        reply_err(id, "CommandNotFound", desc);
        return;
    }
    args = json_object_get(msg, "arguments");
    if (!cmd_table[i].takes_args && json_object_size(args) > 0) {
        snprintf(desc, sizeof desc, QSL_DESC_UNEXPECTED_PARAM, json_object_iter_key(json_object_iter(args)));
        reply_err(id, "GenericError", desc);
        return;
    }
    cmd_table[i].run(s, args, id);
}

static void sess_line(struct sim_session *s, const char *line, size_t len)
{
    json_error_t err;
    json_t *msg;
    char *id = NULL;
    char desc[256];

    while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
        len--;
    if (len == 0)
        return;
    msg = json_loadb(line, len, 0, &err);
    if (!msg) {
        g_sim.parse_errors++;
        snprintf(desc, sizeof desc, QSL_DESC_PARSE, err.text);
        reply_err(NULL, "GenericError", desc);
        return;
    }
    if (!json_is_object(msg)) {
        reply_err(NULL, "GenericError", QSL_DESC_NOT_OBJECT);
    } else {
        json_t *jid = json_object_get(msg, "id");

        if (jid)
            id = json_dumps(jid, JSON_ENCODE_ANY);
        if (jid && !id)
            g_sim.out.oom = true;
        else
            sess_command(s, msg, id);
    }
    free(id);
    json_decref(msg);
}

/* Splits data into lines; keeps an unfinished line for the next read. */
static void sess_feed(struct sim_session *s, const char *data, size_t n)
{
    const char *p = data, *end = data + n;

    while (p < end && !s->closing) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t chunk = (size_t)((nl ? nl : end) - p);

        if (s->skip_line) {
            s->skip_line = nl == NULL;
        } else if (!nl || s->partial_len) {
            if (s->partial_len + chunk > MAX_LINE) {
                reply_err(NULL, "GenericError", "JSON parse error, line too long");
                s->partial_len = 0;
                s->skip_line = nl == NULL;
            } else {
                if (s->partial_len + chunk > s->partial_cap) {
                    size_t cap = s->partial_cap ? s->partial_cap : 256;
                    char *np;

                    while (cap < s->partial_len + chunk)
                        cap *= 2;
                    np = realloc(s->partial, cap);
                    if (!np) {
                        sess_close(s, "out of memory");
                        return;
                    }
                    s->partial = np;
                    s->partial_cap = cap;
                }
                memcpy(s->partial + s->partial_len, p, chunk);
                s->partial_len += chunk;
                if (nl) {
                    sess_line(s, s->partial, s->partial_len);
                    s->partial_len = 0;
                }
            }
        } else {
            sess_line(s, p, chunk);
        }
        if (!nl)
            break;
        p = nl + 1;
    }
}

static void sess_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h, (void)suggested;
    /* One buffer for everyone: each read is consumed before the next allocation. */
    *buf = uv_buf_init(g_sim.rbuf, sizeof g_sim.rbuf);
}

static void sess_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct sim_session *s = stream->data;

    if (nread < 0) {
        sess_close(s, nread == UV_EOF ? "end of file" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    g_sim.bytes_in += (uint64_t)nread;
    sess_feed(s, buf->base, (size_t)nread);
    sess_flush(s->closing ? NULL : s);
    if (!s->closing && g_sim.fault == FAULT_SLOW_READ)
        vm_pause(s->vm, g_sim.slow_ms, false);
}

static void sess_update_reading(struct sim_session *s)
{
    bool want = !s->closing && !g_sim.stalled && !s->vm->in_timed;

    if (want && !s->reading) {
        int rc = uv_read_start(&s->io.s, sess_alloc, sess_on_read);

        if (rc < 0) {
            sess_close(s, uv_strerror(rc));
            return;
        }
    } else if (!want && s->reading) {
        uv_read_stop(&s->io.s);
    }
    s->reading = want;
}

/* Accepts the client waiting on vm's listener and greets it. */
static void vm_accept(struct sim_vm *vm)
{
    struct sim_session *s = calloc(1, sizeof *s);
    char name[64];
    int rc;

    vm_name(vm, name, sizeof name);
    if (!s) {
        QB_LOG_ERR(name, "out of memory accepting a client");
        return;
    }
    s->vm = vm;
    rc = g_sim.tcp_port_base ? uv_tcp_init(g_sim.loop, &s->io.tcp)
                             : uv_pipe_init(g_sim.loop, &s->io.pipe, 0);
    if (rc < 0) {
        QB_LOG_ERR(name, "cannot create a session handle: %s", uv_strerror(rc));
        free(s);
        return;
    }
    s->io.h.data = s;
    g_sim.cur_sessions++;
    sim_pre_caps_change(+1);
    rc = uv_accept(&vm->listener.s, &s->io.s);
    if (rc < 0) {
        QB_LOG_WARN(name, "accept: %s", uv_strerror(rc));
        sess_close(s, "accept failed");
        return;
    }
    vm->sess = s;
    vm->sessions++;
    g_sim.accepted++;
    if (g_sim.pre_caps > g_sim.pre_caps_max)
        g_sim.pre_caps_max = g_sim.pre_caps;
    if (g_sim.pre_caps > g_sim.pre_caps_max_drop)
        g_sim.pre_caps_max_drop = g_sim.pre_caps;
    QB_LOG_DEBUG(name, "client connected (session %u)", vm->sessions);
    buf_printf(&g_sim.out, QSL_GREETING);
    sess_flush(s);
    if (!s->closing)
        sess_update_reading(s);
}

static void vm_on_connection(uv_stream_t *server, int status)
{
    struct sim_vm *vm = server->data;

    if (status < 0) {
        char name[64];

        vm_name(vm, name, sizeof name);
        QB_LOG_WARN(name, "listen: %s", uv_strerror(status));
        return;
    }
    /* Not accepting leaves the client in the backlog; libuv stops watching the listener until
     * uv_accept, which is QEMU's one-client-at-a-time. */
    if (vm->sess || g_sim.stalled || g_sim.stopping)
        vm->accept_pending = true;
    else
        vm_accept(vm);
}

/* ---- stats, signals, start and stop -------------------------------------------------------- */

static void sim_write_stats(void)
{
    char tmp[PATH_MAX];
    FILE *f;
    uint32_t i;

    if (g_sim.handshake_log)
        fflush(g_sim.handshake_log); /* a reader of these stats sees the log up to now */
    if (!g_sim.stats_path)
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", g_sim.stats_path);
    f = fopen(tmp, "w");
    if (!f) {
        QB_LOG_ERR(NULL, "cannot write %s: %s", tmp, strerror(errno));
        return;
    }
    g_sim.generation++;
    fprintf(f,
            "{\"generation\": %llu, \"pid\": %d, \"vms\": %u, \"uptime_ms\": %llu,\n"
            " \"sessions_accepted\": %llu, \"sessions_current\": %u, \"ready_current\": %u,"
            " \"ready_max\": %llu,\n"
            " \"pre_caps_current\": %u, \"pre_caps_max\": %llu, \"pre_caps_max_since_drop\": %llu,\n"
            " \"drops\": %llu, \"stalled\": %s, \"events_sent\": %llu, \"steps_sent\": %llu,"
            " \"faults\": %llu, \"fault\": \"%s\", \"parse_errors\": %llu,"
            " \"bytes_in\": %llu, \"bytes_out\": %llu,\n \"commands\": {",
            (unsigned long long)g_sim.generation, (int)getpid(), g_sim.nvms,
            (unsigned long long)(uv_now(g_sim.loop) - g_sim.started_ms),
            (unsigned long long)g_sim.accepted, g_sim.cur_sessions, g_sim.ready,
            (unsigned long long)g_sim.ready_max, g_sim.pre_caps,
            (unsigned long long)g_sim.pre_caps_max, (unsigned long long)g_sim.pre_caps_max_drop,
            (unsigned long long)g_sim.drops, g_sim.stalled ? "true" : "false",
            (unsigned long long)g_sim.events_sent, (unsigned long long)g_sim.steps_sent,
            (unsigned long long)g_sim.faults, fault_names[g_sim.fault],
            (unsigned long long)g_sim.parse_errors, (unsigned long long)g_sim.bytes_in,
            (unsigned long long)g_sim.bytes_out);
    for (i = 0; i < CMD_COUNT; i++)
        fprintf(f, "\"%s\": %llu, ", cmd_table[i].name, (unsigned long long)cmd_counts[i]);
    fprintf(f, "\"other\": %llu},\n \"vm_sessions\": [", (unsigned long long)cmd_counts[CMD_COUNT]);
    for (i = 0; i < g_sim.nvms; i++)
        fprintf(f, "%s%u", i ? ", " : "", g_sim.vms[i].sessions);
    fprintf(f, "],\n \"vm_events\": [");
    for (i = 0; i < g_sim.nvms; i++)
        fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)g_sim.vms[i].events_sent);
    fprintf(f, "]}\n");
    if (fclose(f) != 0 || rename(tmp, g_sim.stats_path) != 0)
        QB_LOG_ERR(NULL, "cannot write %s: %s", g_sim.stats_path, strerror(errno));
}

static void sim_drop_all(void)
{
    uint32_t i, n = 0;

    for (i = 0; i < g_sim.nvms; i++) {
        if (g_sim.vms[i].sess) {
            sess_close(g_sim.vms[i].sess, "dropped (SIGUSR1)");
            n++;
        }
    }
    g_sim.drops++;
    g_sim.pre_caps_max_drop = g_sim.pre_caps;
    QB_LOG_INFO(NULL, "dropped %u sessions", n);
}

static void sim_toggle_stall(void)
{
    uint32_t i;

    g_sim.stalled = !g_sim.stalled;
    QB_LOG_INFO(NULL, "%s", g_sim.stalled ? "stalled" : "stall over");
    for (i = 0; i < g_sim.nvms; i++) {
        struct sim_vm *vm = &g_sim.vms[i];

        if (vm->sess)
            sess_update_reading(vm->sess);
        else if (!g_sim.stalled && vm->accept_pending) {
            vm->accept_pending = false;
            vm_accept(vm);
        }
        vm_update_active(vm);
    }
}

static void sim_shutdown(void)
{
    uint32_t i;

    if (g_sim.stopping)
        return;
    sim_write_stats();
    g_sim.stopping = true;
    for (i = 0; i < g_sim.nvms; i++) {
        struct sim_vm *vm = &g_sim.vms[i];

        if (vm->sess)
            sess_close(vm->sess, "shutting down");
        if (!uv_is_closing(&vm->listener.h))
            uv_close(&vm->listener.h, NULL);
    }
    sim_update_drivers();
    uv_close((uv_handle_t *)&g_sim.tick, NULL);
    uv_close((uv_handle_t *)&g_sim.idle, NULL);
    for (i = 0; i < sizeof g_sim.sig / sizeof g_sim.sig[0]; i++)
        uv_close((uv_handle_t *)&g_sim.sig[i], NULL);
}

static void sim_on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    switch (signum) {
    case SIGUSR1:
        sim_drop_all();
        break;
    case SIGUSR2:
        sim_toggle_stall();
        break;
    case SIGHUP:
        sim_write_stats();
        break;
    default:
        QB_LOG_INFO(NULL, "signal %d: exiting", signum);
        sim_shutdown();
        break;
    }
}

static void sim_raise_nofile(void)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)g_sim.nvms * 2 + 256;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        struct rlimit more = {want, want};

        if (setrlimit(RLIMIT_NOFILE, &more) == 0) /* privileged: above the old hard limit */
            return;
    }
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        QB_LOG_WARN(NULL, "setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        QB_LOG_WARN(NULL, "RLIMIT_NOFILE is %llu; %u VMs need about %llu descriptors",
                    (unsigned long long)rl.rlim_cur, g_sim.nvms, (unsigned long long)want);
}

static int vm_listen(struct sim_vm *vm)
{
    char name[64], path[PATH_MAX];
    int rc;

    vm_name(vm, name, sizeof name);
    if (g_sim.tcp_port_base) {
        struct sockaddr_in sa;

        rc = uv_tcp_init(g_sim.loop, &vm->listener.tcp);
        if (rc == 0)
            rc = uv_ip4_addr("127.0.0.1", g_sim.tcp_port_base + (int)vm->index, &sa);
        if (rc == 0)
            rc = uv_tcp_bind(&vm->listener.tcp, (const struct sockaddr *)&sa, 0);
        snprintf(path, sizeof path, "127.0.0.1:%d", g_sim.tcp_port_base + (int)vm->index);
    } else {
        snprintf(path, sizeof path, "%s/%s.qmp", g_sim.dir, name);
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            QB_LOG_ERR(name, "socket path too long: %s", path);
            return -1;
        }
        rc = uv_pipe_init(g_sim.loop, &vm->listener.pipe, 0);
        if (rc == 0) {
            unlink(path); /* a stale socket from an earlier run */
            rc = uv_pipe_bind(&vm->listener.pipe, path);
        }
    }
    vm->listener.h.data = vm;
    if (rc == 0)
        rc = uv_listen(&vm->listener.s, SOMAXCONN, vm_on_connection);
    if (rc < 0) {
        QB_LOG_ERR(name, "cannot listen on %s: %s", path, uv_strerror(rc));
        if (vm->listener.h.loop) /* initialised: the loop must see it closed */
            uv_close(&vm->listener.h, NULL);
        return -1;
    }
    return 0;
}

static int sim_parse_mix(const char *text)
{
    char *copy = strdup(text), *save = NULL, *tok;
    int rc = 0;

    if (!copy)
        return -1;
    g_sim.mix_len = 0;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;

        for (i = 0; i < STEP_COUNT && strcmp(step_table[i].name, tok); i++)
            ;
        if (i == STEP_COUNT || g_sim.mix_len == MAX_MIX) {
            fprintf(stderr, "qmp_sim: unknown or too many --mix steps at '%s'\n", tok);
            rc = -1;
            break;
        }
        g_sim.mix[g_sim.mix_len++] = (uint8_t)i;
    }
    free(copy);
    return g_sim.mix_len ? rc : -1;
}

static int sim_parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},        {"vms", required_argument, NULL, 'n'},
        {"prefix", required_argument, NULL, 'p'},     {"tcp-port-base", required_argument, NULL, 't'},
        {"rate", required_argument, NULL, 'r'},       {"flat-out", no_argument, NULL, 'F'},
        {"phase", required_argument, NULL, 'P'},
        {"events", required_argument, NULL, 'e'},     {"mix", required_argument, NULL, 'm'},
        {"start-ready", required_argument, NULL, 'W'},
        {"fault", required_argument, NULL, 'f'},      {"fault-every", required_argument, NULL, 'E'},
        {"stall-ms", required_argument, NULL, 'S'},   {"slow-ms", required_argument, NULL, 's'},
        {"disk-size", required_argument, NULL, 'z'},  {"stats", required_argument, NULL, 'o'},
        {"ready-file", required_argument, NULL, 'R'}, {"trace", required_argument, NULL, 'T'},
        {"handshake-log", required_argument, NULL, 'H'},
        {"log-level", required_argument, NULL, 'l'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    enum qb_log_level level;
    int c;
    size_t i;

    g_sim.prefix = "vm-";
    g_sim.events_limit = -1;
    g_sim.fault_every = 10;
    g_sim.stall_ms = 3000;
    g_sim.slow_ms = 200;
    g_sim.disk_size = 67108864;
    if (sim_parse_mix("io_error,resume") < 0)
        return -1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': g_sim.dir = optarg; break;
        case 'n': g_sim.nvms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'p': g_sim.prefix = optarg; break;
        case 't': g_sim.tcp_port_base = atoi(optarg); break;
        case 'r': g_sim.rate = strtod(optarg, NULL); break;
        case 'F': g_sim.flat_out = true; break;
        case 'P':
            if (strcmp(optarg, "aligned") != 0 && strcmp(optarg, "spread") != 0) {
                fprintf(stderr, "qmp_sim: --phase is aligned or spread, not %s\n", optarg);
                return -1;
            }
            g_sim.phase_aligned = strcmp(optarg, "aligned") == 0;
            break;
        case 'e': g_sim.events_limit = strtoll(optarg, NULL, 10); break;
        case 'W': g_sim.start_ready = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'm':
            if (sim_parse_mix(optarg) < 0)
                return -1;
            break;
        case 'f':
            for (i = 1; i < sizeof fault_names / sizeof fault_names[0]; i++)
                if (strcmp(optarg, fault_names[i]) == 0)
                    g_sim.fault = (enum sim_fault)i;
            if (g_sim.fault == FAULT_NONE) {
                fprintf(stderr, "qmp_sim: unknown --fault %s\n", optarg);
                return -1;
            }
            break;
        case 'E': g_sim.fault_every = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'S': g_sim.stall_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': g_sim.slow_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'z': g_sim.disk_size = strtoull(optarg, NULL, 10); break;
        case 'o': g_sim.stats_path = optarg; break;
        case 'R': g_sim.ready_path = optarg; break;
        case 'T': g_sim.trace_path = optarg; break;
        case 'H': g_sim.handshake_log_path = optarg; break;
        case 'l':
            if (qb_log_level_parse(optarg, &level) < 0) {
                fprintf(stderr, "qmp_sim: unknown --log-level %s\n", optarg);
                return -1;
            }
            qb_log_set_level(level);
            break;
        case 'h': fputs(SIM_USAGE, stdout); exit(0);
        default: return -1;
        }
    }
    if (optind != argc || g_sim.nvms == 0 || (!g_sim.dir && !g_sim.tcp_port_base) ||
        g_sim.fault_every == 0 || g_sim.tcp_port_base < 0 ||
        g_sim.tcp_port_base + (long)g_sim.nvms > 65536 || (g_sim.rate > 0 && g_sim.flat_out) ||
        g_sim.rate < 0 || g_sim.start_ready > g_sim.nvms) {
        fputs(SIM_USAGE, stderr);
        return -1;
    }
    g_sim.started = g_sim.start_ready == 0;
    return 0;
}

static int sim_write_ready(void)
{
    char tmp[PATH_MAX];
    FILE *f;

    if (!g_sim.ready_path)
        return 0;
    snprintf(tmp, sizeof tmp, "%s.tmp", g_sim.ready_path);
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, g_sim.ready_path) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    static const int signals[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP};
    uv_loop_t loop;
    uint32_t i, listening = 0;
    int rc = 1;

    if (sim_parse_args(argc, argv) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    sim_raise_nofile();
    if (uv_loop_init(&loop) < 0)
        return 1;
    g_sim.loop = &loop;
    g_sim.started_ms = uv_now(&loop);
    g_sim.vms = calloc(g_sim.nvms, sizeof *g_sim.vms);
    if (!g_sim.vms) {
        QB_LOG_ERR(NULL, "out of memory for %u VMs", g_sim.nvms);
        goto out;
    }
    if (g_sim.trace_path) {
        g_sim.trace = fopen(g_sim.trace_path, "w");
        if (!g_sim.trace) {
            QB_LOG_ERR(NULL, "cannot open %s: %s", g_sim.trace_path, strerror(errno));
            goto out;
        }
        setvbuf(g_sim.trace, NULL, _IOLBF, 0); /* readers see whole lines as they are sent */
    }
    if (g_sim.handshake_log_path) {
        /* fully buffered: flushed with every stats write (SIGHUP) and at exit */
        g_sim.handshake_log = fopen(g_sim.handshake_log_path, "w");
        if (!g_sim.handshake_log) {
            QB_LOG_ERR(NULL, "cannot open %s: %s", g_sim.handshake_log_path, strerror(errno));
            goto out;
        }
    }
    uv_timer_init(&loop, &g_sim.tick);
    uv_idle_init(&loop, &g_sim.idle);
    for (i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        uv_signal_init(&loop, &g_sim.sig[i]);
        uv_signal_start(&g_sim.sig[i], sim_on_signal, signals[i]);
    }
    for (i = 0; i < g_sim.nvms; i++) {
        g_sim.vms[i].index = i;
        g_sim.vms[i].disk_size = g_sim.disk_size;
        if (vm_listen(&g_sim.vms[i]) < 0)
            break;
        listening++;
    }
    if (listening < g_sim.nvms || sim_write_ready() < 0) {
        if (listening == g_sim.nvms)
            QB_LOG_ERR(NULL, "cannot write the ready file %s", g_sim.ready_path);
        /* Close what was opened; vm_listen closed the one that failed. */
        g_sim.nvms = listening;
        sim_shutdown();
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out;
    }
    QB_LOG_INFO(NULL, "qmp_sim: %u VMs listening (%s)", g_sim.nvms,
                g_sim.tcp_port_base ? "tcp" : g_sim.dir);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (uv_loop_close(&loop) != 0)
        QB_LOG_WARN(NULL, "loop closed with handles left");
    if (!g_sim.tcp_port_base && g_sim.dir) {
        for (i = 0; i < listening; i++) {
            char name[64], path[PATH_MAX];

            vm_name(&g_sim.vms[i], name, sizeof name);
            snprintf(path, sizeof path, "%s/%s.qmp", g_sim.dir, name);
            unlink(path);
        }
    }
    if (g_sim.trace)
        fclose(g_sim.trace);
    if (g_sim.handshake_log)
        fclose(g_sim.handshake_log);
    free(g_sim.vms);
    free(g_sim.out.p);
    return rc;
}
