/* fuzz_conn.c - libFuzzer target for a connection's state machine.
 *
 * Each input is a short program: two header bytes choose the set-up (unix
 * socketpair or TCP loopback pairs, which callbacks the handlers have, socket
 * buffer sizes, what on_open does, which of two reactors), then every byte
 * is an operation on one of two connections (the top bit says which), some
 * with arguments: the peer (the fuzzer's end of the socket) writes, reads,
 * shuts down, closes or resets; the application (goev's end, adopted with
 * goev_conn_open) writes (goev_write, or goev_sendfile of a file holding
 * the same bytes), pauses and resumes reading, shuts down, closes,
 * aborts, starts and cancels timers, changes what its callbacks do; the
 * connection is opened (connection 0 is at the start; one that has closed
 * starts a new life, on a fresh socket pair, usually in the slot its last
 * life freed); or the loop runs a pass.
 *
 * The program runs on the poller's thread of a reactor that lives for the
 * whole process (goev_reactor_start): the fuzzer thread posts it and waits.
 * It runs until a PASS operation, which posts the rest for the next loop
 * pass, so that everything the backend does between passes (reads, sends,
 * completions, closes) happens between operations.  After the last
 * operation an epilogue reads everything the connection still has to give,
 * closes it gracefully and waits for on_close.
 *
 * The bytes each side writes follow a known pattern, so that a lost,
 * duplicated or reordered byte shows.  Checked, aborting on a violation:
 *   - on_read: len > 0, data is the peer's stream at the consumed offset
 *     (the kept tail first, then new bytes), never while reading is paused
 *     or after goev_close/goev_abort; on_eof only after the peer shut down,
 *     at most once, with all bytes presented if reading was never paused;
 *   - the peer reads a prefix of what goev_write accepted, in order; if the
 *     connection closed normally (reason 0) and the peer kept reading, all
 *     of it, then EOF;
 *   - if the application never closed it, every byte the peer wrote is
 *     presented to on_read before the end;
 *   - goev_pending never exceeds what the peer has not read yet; on_drained
 *     only with nothing pending;
 *   - return values: goev_write/sendfile/pause/resume/shutdown give 0 or
 *     -ENOTCONN,
 *     -ENOTCONN after a close or a shutdown; timer_start -EINVAL on a
 *     closing handler; goev_close/goev_abort -EINVAL after on_close;
 *     goev_conn_open -EINVAL on a handler in use, leaving the fd open;
 *   - timers fire only when started and not cancelled, a one-shot once;
 *   - on_close exactly once, no callback after it, its timers idle, the
 *     socket closed by then (the peer sees EOF or an error at once);
 *   - no descriptor leaked (/proc/self/fd counted before and after), no
 *     memory leaked (ASan/LSan), no connection left counted in the stats.
 *
 * GOEV_BACKEND from the environment chooses the backend, as for the suites.
 */
#include "goev.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- limits (keep one input fast) --------------------------------------- */

#define MAX_OPS 96
#define MAX_IN_BYTES (192u << 10)       /* the peer writes at most this */
#define MAX_OUT_BYTES (192u << 10)      /* goev_write accepts at most this */
#define MAX_CALLBACKS 4000
#define NTIMERS 3
#define EPILOGUE_MS 5000                /* a phase of the epilogue that takes longer fails */

static struct run *cur;  /* for the failure message */

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define CHECK(cond, fmt, ...)                                                  \
    do {                                                                        \
        if (!(cond))                                                            \
            fail("%s:%d: check failed: %s: " fmt, __FILE__, __LINE__, #cond,    \
                 ##__VA_ARGS__);                                                \
    } while (0)

/* ---- the two byte streams ------------------------------------------------ */

/* Byte i of stream s: a hash of i / 8, so that no shift or loss of a chunk
 * of any size matches by chance. */
static inline uint64_t stream_word(uint64_t s, uint64_t w);
static inline uint8_t stream_byte(uint64_t s, uint64_t i)
{
    return (uint8_t)(stream_word(s, i >> 3) >> ((i & 7) * 8));
}

static inline uint64_t stream_word(uint64_t s, uint64_t w)
{
    uint64_t x = w * 0x9e3779b97f4a7c15ull ^ s;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return x;
}

static void stream_fill(uint64_t s, uint64_t off, uint8_t *b, size_t n)
{
    size_t i = 0;
    for (; i < n && ((off + i) & 7); i++)
        b[i] = stream_byte(s, off + i);
    for (; i + 8 <= n; i += 8) {
        uint64_t x = stream_word(s, (off + i) >> 3);
        for (int k = 0; k < 8; k++)
            b[i + k] = (uint8_t)(x >> (k * 8));
    }
    for (; i < n; i++)
        b[i] = stream_byte(s, off + i);
}

static ptrdiff_t stream_diff(uint64_t s, uint64_t off, const uint8_t *b, size_t n)
{
    uint8_t want[4096];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < sizeof want ? n - done : sizeof want;
        stream_fill(s, off + done, want, k);
        if (memcmp(want, b + done, k))
            for (size_t i = 0; i < k; i++)
                if (want[i] != b[done + i])
                    return (ptrdiff_t)(done + i);
        done += k;
    }
    return -1;
}

#define IN_STREAM 0x1234567ull      /* peer -> goev */
#define OUT_STREAM 0x7654321ull     /* goev -> peer */

/* ---- state of one input ------------------------------------------------ */

enum { RM_ALL, RM_SOME, RM_NONE, RM_ERROR, RM_ECHO, RM_PAUSE, RM_CLOSE, RM_OVER, RM_ABORT,
       RM_SHUT, RM_N };
enum { EM_KEEP, EM_ERROR, EM_CLOSE, EM_WRITE_SHUT, EM_N };
enum { TM_NOTHING, TM_ERROR, TM_WRITE, TM_CLOSE, TM_REARM, TM_PAUSE, TM_RESUME, TM_N };
enum { DM_NOTHING, DM_RESUME, DM_WRITE, DM_ERROR, DM_N };

enum phase { PH_OPS, PH_DRAIN_IN, PH_CLOSE, PH_DONE };

struct run;

/* One connection of the input (a new life each time OP_OPEN reopens it). */
struct fz {
    goev_handler h;
    goev_timer t[NTIMERS];
    int armed[NTIMERS], periodic[NTIMERS];
    struct run *g;
    int idx;
    unsigned life;                  /* 0: never opened */

    int peer;                       /* -1 once closed */
    bool peer_shut_wr, peer_shut_rd, peer_closed, peer_eof, peer_err;
    uint64_t in_written, in_consumed, in_presented;
    uint64_t out_accepted, out_read;

    bool opened, closed, eof_seen, ended;   /* ended: on_close checked */
    int close_reason;
    bool close_asked;               /* goev_close/abort called, or a callback closed */
    bool shut_asked;
    bool paused, ever_paused;
    unsigned callbacks;

    int read_mode, read_arg, eof_mode, timeout_mode, drained_mode;
    bool drain_started;
};

#define NCONNS 2

/* The input: its program and its connections. */
struct run {
    const uint8_t *prog;
    size_t len, pos;
    unsigned nops;
    unsigned extra_passes;
    goev_poller *p;
    uint8_t hdr0, hdr1;
    int tcp, uring;
    struct fz c[NCONNS];

    enum phase phase;
    uint64_t phase_start;

    /* completion, for the fuzzer thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fuzz_conn: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    struct run *g = cur;
    for (int i = 0; g && i < NCONNS; i++) {
        struct fz *f = &g->c[i];
        if (!f->life)
            continue;
        fprintf(stderr,
                "  conn %d life %u (op %u/%zu phase %d tcp %d): peer fd %d shut_wr %d shut_rd %d "
                "closed %d eof %d err %d; in written %llu presented %llu consumed %llu; "
                "out accepted %llu read %llu; opened %d closed %d reason %d close_asked %d "
                "shut_asked %d paused %d\n",
                i, f->life, g->nops, g->pos, (int)g->phase, g->tcp, f->peer, f->peer_shut_wr,
                f->peer_shut_rd, f->peer_closed, f->peer_eof, f->peer_err,
                (unsigned long long)f->in_written, (unsigned long long)f->in_presented,
                (unsigned long long)f->in_consumed, (unsigned long long)f->out_accepted,
                (unsigned long long)f->out_read, f->opened, f->closed, f->close_reason,
                f->close_asked, f->shut_asked, f->paused);
    }
    abort();
}

static unsigned get8(struct run *f)
{
    return f->pos < f->len ? f->prog[f->pos++] : 0;
}

static unsigned get16(struct run *f)
{
    unsigned a = get8(f);
    return a | get8(f) << 8;
}

/* A callback is running: it must not come after on_close, nor endlessly. */
static void cb_enter(struct fz *f, const char *name)
{
    CHECK(!f->closed, "%s after on_close", name);
    CHECK(f->opened || !strcmp(name, "on_open"), "%s before on_open", name);
    CHECK(++f->callbacks < MAX_CALLBACKS * 4, "%u callbacks: a callback loop", f->callbacks);
}

static void check_pending(struct fz *f)
{
    if (f->closed)
        return;
    size_t pend = goev_pending(&f->h);
    /* io_uring: a SEND can complete (and the peer read its bytes) before
     * the poller reaps its completion; until then the bytes still count. */
    uint64_t unread = f->g->uring ? f->out_accepted : f->out_accepted - f->out_read;
    CHECK(pend <= unread, "goev_pending %zu > %llu unread by the peer",
          pend, (unsigned long long)(f->out_accepted - f->out_read));
}

/* ---- the application's actions (also used from callbacks) --------------- */

static void app_write(struct fz *f, size_t n)
{
    static uint8_t buf[16384];
    if (n > sizeof buf)
        n = sizeof buf;
    if (f->out_accepted + n > MAX_OUT_BYTES)
        return;
    stream_fill(OUT_STREAM, f->out_accepted, buf, n);
    int rc = goev_write(&f->h, buf, n);
    CHECK(rc == 0 || rc == -ENOTCONN, "goev_write: %d", rc);
    if (f->close_asked || f->shut_asked || f->closed)
        CHECK(rc == -ENOTCONN, "goev_write after close/shutdown: %d", rc);
    if (rc == 0)
        f->out_accepted += n;
}

/* The output stream is also a file (a memfd made at start-up), so that a
 * goev_sendfile of its range at out_accepted continues the stream. */
static int stream_file = -1;

static void app_sendfile(struct fz *f, size_t n)
{
    if (f->out_accepted + n > MAX_OUT_BYTES)
        return;
    int rc = goev_sendfile(&f->h, stream_file, f->out_accepted, n);
    CHECK(rc == 0 || rc == -ENOTCONN, "goev_sendfile: %d", rc);
    if (f->close_asked || f->shut_asked || f->closed)
        CHECK(rc == -ENOTCONN, "goev_sendfile after close/shutdown: %d", rc);
    if (rc == 0)
        f->out_accepted += n;
}

static void app_pause(struct fz *f)
{
    int rc = goev_pause_read(&f->h);
    CHECK(rc == 0 || rc == -ENOTCONN, "goev_pause_read: %d", rc);
    if (f->closed)
        CHECK(rc == -ENOTCONN, "goev_pause_read after on_close: %d", rc);
    if (rc == 0)
        f->paused = f->ever_paused = true;
}

static void app_resume(struct fz *f)
{
    int rc = goev_resume_read(&f->h);
    if (f->closed)
        CHECK(rc == -ENOTCONN, "goev_resume_read after on_close: %d", rc);
    if (rc == 0)
        f->paused = false;
    else if (rc != -ENOTCONN)
        f->close_asked = true;      /* resuming failed: the connection closes */
}

static void app_shutdown(struct fz *f)
{
    int rc = goev_shutdown(&f->h);
    CHECK(rc == 0 || rc == -ENOTCONN, "goev_shutdown: %d", rc);
    if (f->close_asked || f->closed)
        CHECK(rc == -ENOTCONN, "goev_shutdown after close: %d", rc);
    if (rc == 0)
        f->shut_asked = true;
}

static void app_close(struct fz *f, bool abort_it)
{
    int rc = abort_it ? goev_abort(&f->h) : goev_close(&f->h);
    if (f->closed)
        CHECK(rc == -EINVAL, "goev_%s after on_close: %d", abort_it ? "abort" : "close", rc);
    else
        CHECK(rc == 0, "goev_%s: %d", abort_it ? "abort" : "close", rc);
    if (rc == 0)
        f->close_asked = true;
}

static void app_timer(struct fz *f, unsigned i, unsigned delay, unsigned period)
{
    if (f->closed)      /* a new timer would attach the finished handler again */
        return;
    int rc = goev_timer_start(f->g->p, &f->h, &f->t[i], delay, period);
    if (f->close_asked)
        CHECK(rc == -EINVAL, "goev_timer_start on a closing handler: %d", rc);
    CHECK(rc == 0 || rc == -EINVAL, "goev_timer_start: %d", rc);
    if (rc == 0) {
        f->armed[i] = 1;
        f->periodic[i] = period > 0;
    } else {
        /* Refused (closing): t is as it was, or cancelled by the close. */
        if (!goev_timer_active(&f->t[i]))
            f->armed[i] = 0;
    }
}

static void app_cancel(struct fz *f, unsigned i)
{
    CHECK(goev_timer_cancel(&f->t[i]) == 0, "goev_timer_cancel");
    f->armed[i] = 0;
    CHECK(!goev_timer_active(&f->t[i]), "timer active after cancel");
}

/* ---- callbacks --------------------------------------------------------- */

static int on_open(goev_handler *h)
{
    struct fz *f = (struct fz *)h;
    cb_enter(f, "on_open");
    CHECK(!f->opened, "on_open twice");
    f->opened = true;
    switch (f->g->hdr0 >> 6) {
    case 1:
        app_write(f, 100);
        break;
    case 2:
        app_pause(f);
        break;
    case 3:
        f->close_asked = true;
        return -EPROTO;
    }
    return 0;
}

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct fz *f = (struct fz *)h;
    cb_enter(f, "on_read");
    CHECK(len > 0, "on_read with len 0");
    CHECK(!f->paused, "on_read while paused");
    CHECK(!f->close_asked, "on_read after goev_close/goev_abort");
    CHECK(f->in_consumed + len <= f->in_written, "on_read: %zu bytes at %llu, peer wrote %llu",
          len, (unsigned long long)f->in_consumed, (unsigned long long)f->in_written);
    CHECK(f->in_consumed + len >= f->in_presented,
          "on_read: kept tail not presented again (%zu bytes at %llu, %llu presented before)",
          len, (unsigned long long)f->in_consumed, (unsigned long long)f->in_presented);
    ptrdiff_t d = stream_diff(IN_STREAM, f->in_consumed, (const uint8_t *)data, len);
    CHECK(d < 0, "on_read: byte %llu of the stream is wrong (call of %zu bytes)",
          (unsigned long long)(f->in_consumed + (uint64_t)d), len);
    f->in_presented = f->in_consumed + len;

    size_t n = len;
    switch (f->read_mode) {
    case RM_ALL:
        break;
    case RM_SOME:
        n = len < (size_t)f->read_arg ? len : (size_t)f->read_arg;
        break;
    case RM_NONE:
        n = 0;
        break;
    case RM_ERROR:
        f->close_asked = true;
        return -EPROTO;
    case RM_ECHO:
        app_write(f, len < (size_t)f->read_arg + 1 ? len : (size_t)f->read_arg + 1);
        break;
    case RM_PAUSE:
        app_pause(f);
        break;
    case RM_CLOSE:
        app_close(f, false);
        break;
    case RM_OVER:
        f->close_asked = true;      /* more than len: the library closes it */
        return (ssize_t)len + 1 + f->read_arg;
    case RM_ABORT:
        app_close(f, true);
        break;
    case RM_SHUT:
        app_shutdown(f);
        break;
    }
    f->in_consumed += n;
    return (ssize_t)n;
}

static int on_eof(goev_handler *h)
{
    struct fz *f = (struct fz *)h;
    cb_enter(f, "on_eof");
    CHECK(!f->eof_seen, "on_eof twice");
    CHECK(!f->close_asked, "on_eof after goev_close/goev_abort");
    CHECK(f->peer_shut_wr || f->peer_closed, "on_eof but the peer did not shut down");
    f->eof_seen = true;
    if (!f->ever_paused)
        CHECK(f->in_presented == f->in_written,
              "on_eof with %llu of the %llu bytes written by the peer presented",
              (unsigned long long)f->in_presented, (unsigned long long)f->in_written);
    switch (f->eof_mode) {
    case EM_KEEP:
        return 0;
    case EM_ERROR:
        f->close_asked = true;
        return -ESHUTDOWN;
    case EM_CLOSE:
        app_close(f, false);
        return 0;
    case EM_WRITE_SHUT:
        app_write(f, 333);
        app_shutdown(f);
        return 0;
    }
    return 0;
}

static int on_drained(goev_handler *h)
{
    struct fz *f = (struct fz *)h;
    cb_enter(f, "on_drained");
    CHECK(goev_pending(h) == 0, "on_drained with %zu pending", goev_pending(h));
    switch (f->drained_mode) {
    case DM_RESUME:
        app_resume(f);
        break;
    case DM_WRITE:
        if (f->callbacks < MAX_CALLBACKS)
            app_write(f, 1000);
        break;
    case DM_ERROR:
        f->close_asked = true;
        return -EIO;
    }
    return 0;
}

static int on_timeout(goev_handler *h, goev_timer *t)
{
    struct fz *f = (struct fz *)h;
    cb_enter(f, "on_timeout");
    CHECK(t >= f->t && t < f->t + NTIMERS, "on_timeout for a foreign timer");
    unsigned i = (unsigned)(t - f->t);
    CHECK(f->armed[i], "timer %u fired but was not started (or was cancelled)", i);
    CHECK(goev_timer_active(t) == f->periodic[i], "timer %u: active %d in on_timeout, periodic %d",
          i, goev_timer_active(t), f->periodic[i]);
    if (!f->periodic[i])
        f->armed[i] = 0;
    if (f->callbacks >= MAX_CALLBACKS)
        return 0;
    switch (f->timeout_mode) {
    case TM_ERROR:
        f->close_asked = true;
        return -ETIMEDOUT;
    case TM_WRITE:
        app_write(f, 200);
        break;
    case TM_CLOSE:
        app_close(f, false);
        break;
    case TM_REARM:
        if (!f->close_asked)
            app_timer(f, i, 0, 0);
        break;
    case TM_PAUSE:
        app_pause(f);
        break;
    case TM_RESUME:
        app_resume(f);
        break;
    }
    return 0;
}

static void on_close(goev_handler *h, int reason)
{
    struct fz *f = (struct fz *)h;
    CHECK(!f->closed, "on_close twice");
    CHECK(f->opened, "on_close without on_open");
    f->closed = true;
    f->close_reason = reason;
    for (unsigned i = 0; i < NTIMERS; i++) {
        CHECK(!goev_timer_active(&f->t[i]), "timer %u still active in on_close", i);
        f->armed[i] = 0;
    }
    CHECK(goev_handler_fd(h) == -1, "goev_handler_fd %d in on_close", goev_handler_fd(h));
    CHECK(goev_pending(h) == 0, "goev_pending %zu in on_close", goev_pending(h));
}

/* Every combination of the optional callbacks: hdr0 bits 0-1. */
static const struct goev_handler_ops ops_variants[4] = {
    {.on_open = on_open, .on_read = on_read, .on_timeout = on_timeout, .on_close = on_close},
    {.on_open = on_open, .on_read = on_read, .on_timeout = on_timeout, .on_close = on_close,
     .on_eof = on_eof},
    {.on_open = on_open, .on_read = on_read, .on_timeout = on_timeout, .on_close = on_close,
     .on_drained = on_drained},
    {.on_open = on_open, .on_read = on_read, .on_timeout = on_timeout, .on_close = on_close,
     .on_eof = on_eof, .on_drained = on_drained},
};

/* ---- the peer ------------------------------------------------------------ */

static void peer_write(struct fz *f, size_t n)
{
    static uint8_t buf[65536];
    if (f->peer < 0 || f->peer_shut_wr)
        return;
    if (n > sizeof buf)
        n = sizeof buf;
    if (f->in_written + n > MAX_IN_BYTES)
        n = MAX_IN_BYTES - f->in_written;
    if (!n)
        return;
    stream_fill(IN_STREAM, f->in_written, buf, n);
    ssize_t k = send(f->peer, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0)
        f->in_written += (uint64_t)k;
    else
        CHECK(k < 0 && (errno == EAGAIN || errno == EPIPE || errno == ECONNRESET),
              "peer send: %zd %s", k, strerror(errno));
}

/* Read up to n bytes; returns what recv returned (-1: errno). */
static ssize_t peer_read(struct fz *f, size_t n)
{
    static uint8_t buf[65536];
    if (f->peer < 0 || f->peer_eof || f->peer_err)
        return 0;
    if (n > sizeof buf)
        n = sizeof buf;
    ssize_t k = recv(f->peer, buf, n, MSG_DONTWAIT);
    if (k > 0) {
        CHECK(f->out_read + (uint64_t)k <= f->out_accepted,
              "peer got %zd bytes at %llu, goev_write accepted %llu", k,
              (unsigned long long)f->out_read, (unsigned long long)f->out_accepted);
        ptrdiff_t d = stream_diff(OUT_STREAM, f->out_read, buf, (size_t)k);
        CHECK(d < 0, "peer: byte %llu of goev's output is wrong",
              (unsigned long long)(f->out_read + (uint64_t)d));
        f->out_read += (uint64_t)k;
    } else if (k == 0) {
        f->peer_eof = true;
    } else if (errno != EAGAIN) {
        CHECK(errno == ECONNRESET || errno == EPIPE, "peer recv: %s", strerror(errno));
        f->peer_err = true;
    }
    return k;
}

static void peer_read_all(struct fz *f)
{
    while (peer_read(f, 65536) > 0)
        ;
}

static void peer_close(struct fz *f, bool reset)
{
    if (f->peer < 0)
        return;
    if (reset && f->g->tcp) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(f->peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(f->peer);
    f->peer = -1;
    f->peer_closed = true;
}

/* ---- the program ---------------------------------------------------------- */

enum {
    OP_PASS, OP_PEER_WRITE, OP_PEER_READ, OP_PEER_SHUT_WR, OP_PEER_SHUT_RD, OP_PEER_CLOSE,
    OP_PEER_RESET, OP_WRITE, OP_PAUSE, OP_RESUME, OP_SHUTDOWN, OP_CLOSE, OP_ABORT,
    OP_TIMER, OP_CANCEL, OP_READ_MODE, OP_EOF_MODE, OP_TIMEOUT_MODE, OP_DRAINED_MODE,
    OP_BIG_WRITE, OP_PASSES, OP_OPEN, OP_SENDFILE, OP_N
};

static void step(goev_poller *p, void *arg);

static void next_pass(struct run *g)
{
    int rc = goev_post(g->p, step, g);
    CHECK(rc == 0, "goev_post: %d", rc);
}

static void finish_input(struct run *g)
{
    pthread_mutex_lock(&g->mu);
    g->done = 1;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void make_pair(int tcp, int sv[2]);

/* A new life for connection f: a fresh socket pair, adopted by goev. */
static void conn_open(struct run *g, struct fz *f)
{
    int sv[2];
    make_pair(g->tcp, sv);
    static const int bufs[4] = {0, 2048, 8192, 65536};
    int gb = bufs[(g->hdr0 >> 4) & 3], pb = bufs[g->hdr1 & 3];
    if (gb)
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &gb, sizeof gb);
    if (pb)
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &pb, sizeof pb);
    unsigned life = f->life;
    int idx = f->idx;
    memset(f, 0, sizeof *f);
    f->g = g;
    f->idx = idx;
    f->life = life + 1;
    f->peer = sv[1];
    f->read_mode = (int)((g->hdr1 >> 2) % RM_N);
    f->read_arg = 1 + (g->hdr1 >> 4) * 7;
    goev_handler_init(&f->h, &ops_variants[g->hdr0 & 3]);
    for (unsigned i = 0; i < NTIMERS; i++)
        goev_timer_init(&f->t[i]);
    int rc = goev_conn_open(g->p, &f->h, sv[0]);
    CHECK(rc == 0, "goev_conn_open: %d", rc);
    CHECK(f->opened, "no on_open during goev_conn_open");
}

/* After on_close: the socket is closed, so the peer sees the end at once
 * (after what is still in its buffer); and a normal close delivered all. */
static void life_end(struct fz *f)
{
    CHECK(f->closed, "life_end before on_close");
    if (f->peer >= 0) {
        for (int tries = 0; !f->peer_eof && !f->peer_err; tries++) {
            if (peer_read(f, 65536) < 0 && errno == EAGAIN) {
                CHECK(tries < 100, "the peer sees neither EOF nor an error after on_close");
                struct pollfd pfd = {.fd = f->peer, .events = POLLIN};
                poll(&pfd, 1, 10);
            }
        }
    }
    /* TCP: closing a socket with unread input sends a RST, which discards
     * what the kernel still had to send; so only when goev read all. */
    if (f->close_reason == 0 && !f->peer_shut_rd && !f->peer_closed &&
        (!f->g->tcp || f->in_presented == f->in_written))
        CHECK(f->out_read == f->out_accepted,
              "closed normally, but the peer got %llu of the %llu bytes goev_write accepted",
              (unsigned long long)f->out_read, (unsigned long long)f->out_accepted);
    peer_close(f, false);
    f->ended = true;
}

/* Run operations until a pass is due; false when the program is over.  An
 * operation byte is (connection << 7) | op. */
static bool run_ops(struct run *g)
{
    while (g->pos < g->len && g->nops < MAX_OPS) {
        g->nops++;
        unsigned b = get8(g);
        unsigned op = (b & 0x7f) % OP_N;
        struct fz *f = &g->c[b >> 7];
        if (op == OP_PASS)
            return true;
        if (op == OP_PASSES) {  /* a few passes in a row: time for timers */
            g->extra_passes = get8(g) % 8;
            return true;
        }
        if (op == OP_OPEN) {
            if (f->life && f->closed && !f->ended)
                life_end(f);
            if (!f->life || f->ended) {
                conn_open(g, f);
            } else {
                /* A handler in use refuses a second socket, and leaves
                 * both it and itself alone. */
                int sv[2];
                make_pair(g->tcp, sv);
                int rc = goev_conn_open(g->p, &f->h, sv[0]);
                CHECK(rc == -EINVAL, "goev_conn_open on a handler in use: %d", rc);
                CHECK(fcntl(sv[0], F_GETFD) >= 0, "refused fd closed");
                close(sv[0]);
                close(sv[1]);
            }
            continue;
        }
        /* Arguments are taken even for a connection not opened yet, so that
         * the program reads the same either way. */
        unsigned a1 = 0, a2 = 0;
        switch (op) {
        case OP_PEER_WRITE: case OP_PEER_READ: case OP_WRITE: case OP_SENDFILE:
            a1 = get16(g);
            break;
        case OP_TIMER: case OP_CANCEL: case OP_EOF_MODE: case OP_TIMEOUT_MODE:
        case OP_DRAINED_MODE:
            a1 = get8(g);
            break;
        case OP_READ_MODE:
            a1 = get8(g);
            a2 = get8(g);
            break;
        }
        if (!f->life)
            continue;
        switch (op) {
        case OP_PEER_WRITE:
            peer_write(f, 1 + a1 % 8192);
            break;
        case OP_PEER_READ:
            peer_read(f, 1 + a1);
            break;
        case OP_PEER_SHUT_WR:
            if (f->peer >= 0 && !f->peer_shut_wr) {
                shutdown(f->peer, SHUT_WR);
                f->peer_shut_wr = true;
            }
            break;
        case OP_PEER_SHUT_RD:
            if (f->peer >= 0 && !f->peer_shut_rd) {
                shutdown(f->peer, SHUT_RD);
                f->peer_shut_rd = true;
            }
            break;
        case OP_PEER_CLOSE:
            peer_close(f, false);
            break;
        case OP_PEER_RESET:
            peer_close(f, true);
            break;
        case OP_WRITE:
            app_write(f, 1 + a1 % 4096);
            break;
        case OP_BIG_WRITE:
            app_write(f, 16384);
            break;
        case OP_SENDFILE:
            app_sendfile(f, 1 + a1 % 32768);
            break;
        case OP_PAUSE:
            app_pause(f);
            break;
        case OP_RESUME:
            app_resume(f);
            break;
        case OP_SHUTDOWN:
            app_shutdown(f);
            break;
        case OP_CLOSE:
            app_close(f, false);
            break;
        case OP_ABORT:
            app_close(f, true);
            break;
        case OP_TIMER:
            app_timer(f, (a1 & 3) % NTIMERS, (a1 >> 2) % 3,
                      (a1 >> 4) % 4 == 3 ? 1 + (a1 >> 6) % 2 : 0);
            break;
        case OP_CANCEL:
            app_cancel(f, a1 % NTIMERS);
            break;
        case OP_READ_MODE:
            f->read_mode = (int)(a1 % RM_N);
            f->read_arg = (int)a2;
            break;
        case OP_EOF_MODE:
            f->eof_mode = (int)(a1 % EM_N);
            break;
        case OP_TIMEOUT_MODE:
            f->timeout_mode = (int)(a1 % TM_N);
            break;
        case OP_DRAINED_MODE:
            f->drained_mode = (int)(a1 % DM_N);
            break;
        }
        check_pending(f);
    }
    return false;
}

static void enter_phase(struct run *g, enum phase ph)
{
    g->phase = ph;
    g->phase_start = now_ms();
}

/* Still to be finished by the epilogue. */
static bool open_life(const struct fz *f)
{
    return f->life && !f->ended;
}

/* The epilogue, one pass at a time, for every connection at once. */
static bool epilogue(struct run *g)
{
    bool busy = false;
    switch (g->phase) {
    case PH_OPS:
        /* Calm callbacks from here on, and no timers. */
        for (int k = 0; k < NCONNS; k++) {
            struct fz *f = &g->c[k];
            if (!open_life(f))
                continue;
            f->read_mode = RM_ALL;
            f->eof_mode = EM_KEEP;
            f->timeout_mode = TM_NOTHING;
            f->drained_mode = DM_NOTHING;
            for (unsigned i = 0; i < NTIMERS; i++)
                app_cancel(f, i);
        }
        enter_phase(g, PH_DRAIN_IN);
        /* fall through */
    case PH_DRAIN_IN:
        for (int k = 0; k < NCONNS; k++) {
            struct fz *f = &g->c[k];
            /* Nobody closed it: every byte the peer wrote reaches on_read.
             * (Without on_eof, the peer's EOF closes it, kept tail or not.) */
            if (!open_life(f) || f->closed || f->close_asked ||
                (!f->h.ops->on_eof && (f->peer_shut_wr || f->peer_closed)))
                continue;
            if (!f->drain_started) {
                f->drain_started = true;
                if (!f->paused)
                    app_pause(f);   /* pause + resume presents a kept tail again */
                app_resume(f);
                busy = true;
                continue;
            }
            peer_read_all(f);   /* so that nothing blocks on a full buffer */
            if (f->in_consumed < f->in_written) {
                CHECK(now_ms() - g->phase_start < EPILOGUE_MS,
                      "conn %d: the peer wrote %llu bytes, on_read got %llu", k,
                      (unsigned long long)f->in_written, (unsigned long long)f->in_consumed);
                busy = true;
            }
        }
        if (busy)
            return true;
        enter_phase(g, PH_CLOSE);
        /* A peer that stopped reading cannot take what is queued: abort. */
        for (int k = 0; k < NCONNS; k++) {
            struct fz *f = &g->c[k];
            if (open_life(f) && !f->closed)
                app_close(f, f->peer_shut_rd || f->peer_err);
        }
        /* fall through */
    case PH_CLOSE:
        /* A graceful close ends, if the peer reads (or has gone). */
        for (int k = 0; k < NCONNS; k++) {
            struct fz *f = &g->c[k];
            if (!open_life(f))
                continue;
            peer_read_all(f);
            if (!f->closed) {
                CHECK(now_ms() - g->phase_start < EPILOGUE_MS, "conn %d: goev_close: no on_close",
                      k);
                busy = true;
            }
        }
        if (busy)
            return true;
        enter_phase(g, PH_DONE);
        /* fall through */
    case PH_DONE:
        break;
    }
    for (int k = 0; k < NCONNS; k++)
        if (open_life(&g->c[k]))
            life_end(&g->c[k]);
    struct goev_stats st;
    goev_stats_get(goev_poller_reactor(g->p), goev_poller_index(g->p), &st);
    CHECK(st.conns == 0, "%llu connections counted open after on_close",
          (unsigned long long)st.conns);
    return false;
}

static void step(goev_poller *p, void *arg)
{
    struct run *g = arg;
    if (g->extra_passes) {
        g->extra_passes--;
        next_pass(g);
        return;
    }
    if ((g->phase == PH_OPS && run_ops(g)) || epilogue(g)) {
        next_pass(g);
        return;
    }
    finish_input(g);
}

/* ---- set-up ------------------------------------------------------------- */

static goev_reactor *reactors[2];
static int listen_fd = -1;
static struct sockaddr_in listen_sa;

static goev_reactor *reactor_get(int small)
{
    if (reactors[small])
        return reactors[small];
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 1;
    if (small) {
        /* Tiny read buffers (io_uring: few of them, so that recv runs out),
         * and a small bound on the kept tail. */
        o.read_buf_size = 512;
        o.read_bufs = 4;
        o.max_input = 8192;
    } else {
        o.max_input = 64u << 10;
    }
    goev_reactor *r;
    int rc = goev_reactor_new(&r, &o);
    if (rc < 0) {
        fprintf(stderr, "fuzz_conn: goev_reactor_new: %s (%s)\n", strerror(-rc),
                goev_last_error());
        exit(1);
    }
    const char *want = getenv("GOEV_BACKEND");
    if (want && (!strcmp(want, "epoll") || !strcmp(want, "io_uring")) &&
        strcmp(want, goev_backend_name(r))) {
        fprintf(stderr, "fuzz_conn: GOEV_BACKEND=%s but got %s\n", want, goev_backend_name(r));
        exit(1);
    }
    rc = goev_reactor_start(r);
    if (rc < 0) {
        fprintf(stderr, "fuzz_conn: goev_reactor_start: %s\n", strerror(-rc));
        exit(1);
    }
    reactors[small] = r;
    return r;
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++) {
        if (!reactors[i])
            continue;
        goev_reactor_stop(reactors[i]);
        goev_reactor_wait(reactors[i]);
        goev_reactor_free(reactors[i]);
        reactors[i] = NULL;
    }
    if (listen_fd >= 0)
        close(listen_fd);
}

static int fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;       /* the directory's own fd */
}

/* A connected pair: sv[0] for goev, sv[1] for the peer. */
static void make_pair(int tcp, int sv[2])
{
    if (!tcp) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
              strerror(errno));
        return;
    }
    if (listen_fd < 0) {
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(listen_fd >= 0, "socket: %s", strerror(errno));
        listen_sa.sin_family = AF_INET;
        listen_sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof listen_sa;
        CHECK(bind(listen_fd, (struct sockaddr *)&listen_sa, sizeof listen_sa) == 0 &&
                  listen(listen_fd, 16) == 0 &&
                  getsockname(listen_fd, (struct sockaddr *)&listen_sa, &sl) == 0,
              "listen: %s", strerror(errno));
    }
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    CHECK(connect(c, (struct sockaddr *)&listen_sa, sizeof listen_sa) == 0, "connect: %s",
          strerror(errno));
    int s = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(s >= 0, "accept: %s", strerror(errno));
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sv[0] = s;
    sv[1] = c;
}

static void start_input(goev_poller *p, void *arg)
{
    struct run *g = arg;
    conn_open(g, &g->c[0]);
    step(p, g);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    /* Everything that lives for the whole run is made before the first
     * input, so that the descriptor count of each input is its own. */
    int sv[2];
    make_pair(1, sv);
    close(sv[0]);
    close(sv[1]);
    reactor_get(0);
    reactor_get(1);
    stream_file = memfd_create("goev-fuzz-out", MFD_CLOEXEC);
    if (stream_file < 0) {
        perror("fuzz_conn: memfd_create");
        exit(1);
    }
    static uint8_t whole[MAX_OUT_BYTES];
    stream_fill(OUT_STREAM, 0, whole, sizeof whole);
    if (write(stream_file, whole, sizeof whole) != (ssize_t)sizeof whole) {
        perror("fuzz_conn: write");
        exit(1);
    }
    atexit(teardown);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    struct run *g = calloc(1, sizeof *g);
    CHECK(g != NULL, "calloc");
    g->hdr0 = data[0];
    g->hdr1 = data[1];
    g->tcp = (g->hdr0 >> 2) & 1;
    g->prog = data + 2;
    g->len = size - 2;
    for (int k = 0; k < NCONNS; k++) {
        g->c[k].g = g;
        g->c[k].idx = k;
        g->c[k].peer = -1;
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);

    goev_reactor *r = reactor_get((g->hdr0 >> 3) & 1);
    g->p = goev_reactor_poller(r, 0);
    g->uring = !strcmp(goev_backend_name(r), "io_uring");
    int fds = fd_count();
    cur = g;
    CHECK(goev_post(g->p, start_input, g) == 0, "goev_post");
    pthread_mutex_lock(&g->mu);
    while (!g->done)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    int after = fd_count();
    CHECK(after == fds, "%d descriptors open before the input, %d after", fds, after);
    cur = NULL;

    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
    return 0;
}
