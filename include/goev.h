/* goev.h - event-driven TCP servers and clients on Linux, on io_uring or epoll.
 *
 * This header is the manual.  Read the overview first, then each function.
 *
 * OVERVIEW
 *
 *   A goev_reactor owns N pollers.  A poller is one thread with one backend
 *   instance (an io_uring ring or an epoll fd), one 4-ary timer heap and one
 *   read buffer (epoll) or provided-buffer ring (io_uring).  Nothing inside a
 *   poller is locked: every callback of a handler runs on the thread of the
 *   poller that owns it.
 *
 *   The backend is chosen when the reactor is created, from the environment
 *   variable GOEV_BACKEND = auto (default) | io_uring | epoll.  auto uses
 *   io_uring when the kernel offers everything goev needs and epoll otherwise;
 *   asking for io_uring explicitly and not getting it is an error
 *   (goev_reactor_new fails with the reason), never a silent epoll.  With
 *   GOEV_DEBUG=1 one line on stderr names the backend chosen and why.
 *
 *   An application embeds a goev_handler in its own struct and gives it a
 *   const vtable (struct goev_handler_ops).  Data is delivered, not polled:
 *   on_read receives bytes the library has already read.  Writes are copied
 *   into the connection's output queue and flushed once per loop pass, all of
 *   one pass's writes to one connection in one system call (epoll) or one
 *   SEND (io_uring).
 *
 * CONVENTIONS
 *
 *   - Functions return 0 (or a count) on success and a negative errno on
 *     failure; they do not set errno.  A function that fails never calls a
 *     callback later for the work it refused.
 *   - "Poller thread" means the thread running the poller that owns the
 *     handler.  Before goev_reactor_run/goev_reactor_start, the thread that
 *     created the reactor may also call poller-thread functions (to set up
 *     listeners, connections and timers); once the reactor runs, use
 *     goev_post to get onto a poller's thread.  The functions marked
 *     "any thread" are safe everywhere; goev_reactor_stop is also safe in a
 *     signal handler.
 *   - Inside callbacks: a callback runs on its poller's thread, so it may
 *     call every "poller thread" function for handlers of that poller (and
 *     the "any thread" ones): write to, pause, close or abort its own
 *     handler or others of the same poller, start and cancel timers,
 *     connect, watch, create and free pools, post.  What a callback
 *     starts never re-enters it: goev_close's on_close, a resumed tail, a
 *     zero-delay timer all come later in the pass or in a later one.  Not
 *     from a callback: goev_reactor_run, goev_reactor_start,
 *     goev_reactor_wait and goev_reactor_free (they wait for the pollers,
 *     the caller's own among them), goev_acceptor_free (its listeners may
 *     be on other pollers) and goev_replace_allocator.
 *   - Handler life: a handler is in use from the call that attaches it
 *     (an accept's new_handler, goev_connect, goev_conn_open, goev_watch,
 *     goev_timer_start) until its on_close returns.  After on_close - and
 *     already inside it - the library holds no reference to it: it may be
 *     freed, or attached again (goev_connect to reconnect, a new timer) on
 *     any poller without goev_handler_init; its timers are idle.
 *   - Memory the library keeps a pointer to: a handler while in use (see
 *     above), and a timer while it is active - until it fires (a one-shot
 *     timer), is cancelled, or its handler's on_close has run.  Freeing
 *     either earlier is a use-after-free.
 *   - Errors: the library never raises SIGPIPE (every send uses
 *     MSG_NOSIGNAL) and never aborts the process because of the network; a
 *     connection that hits an error is closed with a reason.  It writes to
 *     stderr only when the environment variable GOEV_DEBUG is set (and not
 *     "0").
 */
#ifndef GOEV_H
#define GOEV_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GOEV_BUILDING) && defined(__GNUC__)
#define GOEV_EXTERN __attribute__((visibility("default")))
#else
#define GOEV_EXTERN
#endif

#define GOEV_VERSION_MAJOR 0
#define GOEV_VERSION_MINOR 1
#define GOEV_VERSION_PATCH 0

typedef struct goev_reactor goev_reactor;
typedef struct goev_poller goev_poller;
typedef struct goev_handler goev_handler;
typedef struct goev_timer goev_timer;
typedef struct goev_acceptor goev_acceptor;
typedef struct goev_tls_ctx goev_tls_ctx;
struct goev_siginfo;

/* A connection's identity for goev_async_write: poller index, slot and
 * generation.  A slot's generation changes when its connection closes, so an
 * old id never reaches a newer connection.  0 is never a valid id. */
typedef uint64_t goev_conn_id;

/* ------------------------------------------------------------------------ */
/* Reactor                                                                   */

struct goev_reactor_opts {
    /* Number of pollers (threads).  0 = number of online CPUs. */
    int pollers;
    /* epoll: size of each poller's shared read buffer.  io_uring: size of
     * one provided buffer.  0 = 64 KiB (epoll) / 4 KiB (io_uring). */
    size_t read_buf_size;
    /* io_uring: number of provided buffers per poller (power of two, at
     * most 32768).  0 = 1024.  Ignored by epoll.  Where the kernel
     * consumes provided buffers incrementally (Linux 6.12 and later) a
     * receive takes only the bytes it fills from a buffer and the next
     * receive, of any connection, goes on in the same buffer: small
     * messages on many connections then share buffers and pages instead
     * of taking a buffer each, and one on_read may get less than a whole
     * buffer even when more has arrived (as TCP allows anyway).  Older
     * kernels hand each receive a whole buffer, as before. */
    unsigned read_bufs;
    /* Initial capacity of each poller's timer heap (it grows).  0 = 1024. */
    unsigned timer_heap_size;
    /* Non-zero: pin poller i to CPU (cpu_base + i) % CPUs. */
    int pin_cpus;
    int cpu_base;
    /* Upper bound of bytes kept for a handler that does not consume its
     * input (the unconsumed tail).  Past it the connection is closed with
     * -EMSGSIZE.  0 = 16 MiB. */
    size_t max_input;
    /* Output watermarks of every connection (goev_set_watermarks changes
     * them for one).  When more than out_high_water bytes of a connection's
     * output are still queued at the end of a loop pass (a peer that sends
     * requests and does not read the answers), goev stops reading from it;
     * once the queue has drained to out_low_water it reads again.  Memory
     * per connection stays bounded without any code in the application.
     * 0 = 1 MiB and half the high mark; SIZE_MAX as the high mark turns
     * the limit off.  The low mark must be below the high mark. */
    size_t out_high_water;
    size_t out_low_water;
};

/* Fill *o with the defaults (all zero).  Any thread. */
GOEV_EXTERN void goev_reactor_opts_init(struct goev_reactor_opts *o);

/* Create a reactor.  opts may be NULL for the defaults.  Chooses the backend
 * (see OVERVIEW) and sets up every poller, but starts no thread.
 * Returns 0 and stores the reactor in *out, or a negative errno:
 * -EINVAL (bad option or GOEV_BACKEND value), -ENOSYS/-EPERM (GOEV_BACKEND=
 * io_uring and the kernel or a sandbox refuses it), -EOPNOTSUPP (GOEV_BACKEND=
 * io_uring and the kernel lacks a feature goev needs), -ENOMEM, -EMFILE.  On failure the
 * reason is also available from goev_last_error().  Any thread. */
GOEV_EXTERN int goev_reactor_new(goev_reactor **out, const struct goev_reactor_opts *opts);

/* Run every poller: poller 0 on the calling thread, the others on threads of
 * their own.  Blocks until goev_reactor_stop, then closes every connection
 * still open (on_close with -ECANCELED, on its poller's thread), runs the
 * functions still posted, and joins the threads.  If a poller fails - its
 * wait on the kernel (epoll_wait, io_uring_enter) returns an error other
 * than EINTR, or its thread cannot set up - the whole reactor stops as if
 * goev_reactor_stop had been called, and that error is returned (with
 * GOEV_DEBUG, one line on stderr says which poller and why); the failed
 * poller's connections are closed as at any stop (their fds closed by goev
 * itself, on_close with -ECANCELED), output still queued is lost.  Returns
 * 0 after a goev_reactor_stop, -EALREADY if the reactor already ran, the
 * first poller's error (negative errno), -ENOMEM (nothing was started: the
 * call may be made again, or the reactor freed), or a negative errno if a
 * thread could not start.  Call once, from the creating thread. */
GOEV_EXTERN int goev_reactor_run(goev_reactor *r);

/* Start every poller on a thread of its own and return at once; use
 * goev_reactor_wait to join them.  Same errors as goev_reactor_run. */
GOEV_EXTERN int goev_reactor_start(goev_reactor *r);

/* Wait for the pollers started by goev_reactor_start to finish (after
 * goev_reactor_stop, or after a poller failed: see goev_reactor_run).
 * Returns 0, a failed poller's error (negative errno), or -EINVAL if the
 * reactor was not started.  Not from a poller thread of r. */
GOEV_EXTERN int goev_reactor_wait(goev_reactor *r);

/* Ask every poller to stop after its current pass.  Returns 0.  Any thread,
 * and async-signal-safe (it stores a flag and writes to eventfds). */
GOEV_EXTERN int goev_reactor_stop(goev_reactor *r);

/* Free the reactor.  If it has run, call after goev_reactor_run returned or
 * goev_reactor_wait returned.  If it never ran, every connection, listener
 * and watch registered on it is closed during this call (on a thread of
 * goev's, which this call waits for), and on_close is called for each.
 * Acceptors of r must be freed first.  NULL is a no-op.
 *
 * io_uring and EINTR: Linux notifies every thread that submitted to a ring
 * when the ring is torn down, and that thread's next blocking system call
 * then fails once with EINTR, as after a signal.  goev creates, probes,
 * enables and tears down its rings on threads of its own, so creating,
 * starting and freeing a reactor leave yours alone - except the thread that
 * called goev_reactor_run, which ran poller 0: after goev_reactor_free, its
 * next blocking call may return EINTR.  Code that retries on EINTR (as all
 * code that may see a signal must) needs nothing more. */
GOEV_EXTERN void goev_reactor_free(goev_reactor *r);

/* "io_uring" or "epoll": the backend r uses.  Any thread. */
GOEV_EXTERN const char *goev_backend_name(const goev_reactor *r);

/* Why that backend was chosen, e.g. "GOEV_BACKEND=auto: io_uring ready
 * (SINGLE_ISSUER|DEFER_TASKRUN)" or "auto: io_uring_setup: Operation not
 * permitted; using epoll".  Static storage owned by r.  Any thread. */
GOEV_EXTERN const char *goev_backend_reason(const goev_reactor *r);

/* The reason the last goev_reactor_new on this thread failed ("" if none).
 * Thread-local storage owned by the library. */
GOEV_EXTERN const char *goev_last_error(void);

/* Route every allocation the library makes (reactors, connection slots,
 * buffers, queued output, cross-thread messages, timers' heap) through the
 * given functions instead of malloc, realloc, calloc and free - for an
 * application's own allocator, accounting, or tests that make allocations
 * fail.  The functions must behave like their libc namesakes (realloc(NULL,
 * n) allocates, free(NULL) does nothing) and be safe to call from every
 * poller thread at once.  Passing four NULLs restores libc's.  Returns 0,
 * or -EINVAL if only some are NULL.  Call before the first goev call, or
 * while no reactor, acceptor or pool exists: memory allocated by one set
 * must not be freed by another.  Memory goev hands to liburing and the
 * kernel (io_uring rings and provided buffers) is mapped with mmap and does
 * not pass through them. */
typedef void *(*goev_malloc_fn)(size_t size);
typedef void *(*goev_realloc_fn)(void *ptr, size_t size);
typedef void *(*goev_calloc_fn)(size_t count, size_t size);
typedef void (*goev_free_fn)(void *ptr);
GOEV_EXTERN int goev_replace_allocator(goev_malloc_fn malloc_fn, goev_realloc_fn realloc_fn,
                                       goev_calloc_fn calloc_fn, goev_free_fn free_fn);

/* Number of pollers of r.  Any thread. */
GOEV_EXTERN int goev_poller_count(const goev_reactor *r);

/* Poller i of r (0 <= i < count), or NULL.  Any thread. */
GOEV_EXTERN goev_poller *goev_reactor_poller(goev_reactor *r, int i);

/* The poller whose thread is calling, or NULL when called from a thread that
 * runs no poller. */
GOEV_EXTERN goev_poller *goev_current_poller(void);

/* Index of p in its reactor, and the reactor.  Any thread. */
GOEV_EXTERN int goev_poller_index(const goev_poller *p);
GOEV_EXTERN goev_reactor *goev_poller_reactor(goev_poller *p);

/* Cached monotonic time of the poller's current pass, in milliseconds.
 * Before the reactor runs it is the time of the last timer start on p (or
 * of goev_reactor_new).  Poller thread. */
GOEV_EXTERN uint64_t goev_poller_now_ms(const goev_poller *p);

/* Run fn(p, arg) on p's thread, at its next loop pass.  Functions posted to
 * one poller run in the order they were posted.  If the reactor stops first,
 * they still run, during the stop (what they open there is closed again,
 * with -ECANCELED).  Returns 0, -ENOMEM, or -ESHUTDOWN once p has finished
 * stopping (fn will not run).  Any thread. */
typedef void (*goev_post_fn)(goev_poller *p, void *arg);
GOEV_EXTERN int goev_post(goev_poller *p, goev_post_fn fn, void *arg);

/* goev_post to every poller of r (fn runs once per poller, each on its own
 * thread, all with the same arg).  Returns 0, or -ENOMEM / -ESHUTDOWN as
 * goev_post (in which case it may have been posted to some pollers).  Any
 * thread. */
GOEV_EXTERN int goev_broadcast(goev_reactor *r, goev_post_fn fn, void *arg);

/* Poller-local storage: GOEV_LOCAL_SLOTS pointers per poller, NULL at first,
 * for per-thread caches.  The library never reads or frees them.  Poller
 * thread (use goev_post / goev_broadcast to set them from outside). */
#define GOEV_LOCAL_SLOTS 16
GOEV_EXTERN void *goev_poller_local(goev_poller *p, unsigned slot);
GOEV_EXTERN void goev_poller_set_local(goev_poller *p, unsigned slot, void *value);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */

/* Per-poller counters.  Each is written only by its poller and read with
 * relaxed atomics, so a snapshot is consistent per counter, not across them.
 * sys_* count system calls made by the library on that poller. */
struct goev_stats {
    uint64_t passes;        /* loop passes */
    uint64_t events;        /* readiness events (epoll) or CQEs (io_uring) handled */
    uint64_t sys_wait;      /* epoll_wait / io_uring_enter that waited */
    uint64_t sys_submit;    /* io_uring_enter that only submitted (SQ full) */
    uint64_t sys_read;      /* read/recv */
    uint64_t sys_write;     /* write/writev/send */
    uint64_t sys_accept;    /* accept4 */
    uint64_t sys_ctl;       /* epoll_ctl */
    uint64_t sys_other;     /* close, shutdown, socket, connect, setsockopt, eventfd ... */
    uint64_t cqes;          /* io_uring: CQEs reaped */
    uint64_t enobufs;       /* io_uring: recv ended for lack of provided buffers (re-armed) */
    uint64_t rearms;        /* io_uring: multishot recv/accept/poll re-armed */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t accepted;      /* connections accepted by listeners on this poller */
    uint64_t conns;         /* connections currently open on this poller */
    uint64_t async_dropped; /* goev_async_write messages whose connection had gone */
    uint64_t accept_backoffs; /* times accepting paused for EMFILE/ENFILE/ENOBUFS/ENOMEM */
    uint64_t throttles;     /* times reading stopped at the output high-water mark */
    uint64_t resolves;      /* name lookups started (c-ares queries, hosts file included) */
    uint64_t resolve_hits;  /* name connects answered from the poller's cache */
    uint64_t connect_next;  /* connects by name that went on to the next address */
    uint64_t tls_handshakes; /* TLS handshakes completed (both sides) */
    uint64_t tls_failures;  /* TLS connections closed for a TLS reason (GOEV_ETLS*) */
    uint64_t tls_resumed;   /* of tls_handshakes, those that resumed a session */
};

/* Copy poller i's counters into *out (i = -1: the sum over all pollers).
 * Returns 0 or -EINVAL.  Any thread. */
GOEV_EXTERN int goev_stats_get(goev_reactor *r, int i, struct goev_stats *out);

/* ------------------------------------------------------------------------ */
/* Handlers                                                                 */

/* What on_signal learns about one signal (from signalfd). */
struct goev_siginfo {
    int signo;          /* SIGTERM, SIGRTMIN + 2, ... */
    int code;           /* si_code: SI_USER (kill), SI_QUEUE (sigqueue), ... */
    int pid;            /* sender's pid and real uid, for kill and sigqueue */
    int uid;
    int status;         /* SIGCHLD: exit status or signal of the child */
    int value;          /* sigqueue: the sival_int sent */
};

/* Readiness bits for raw fd watches (goev_watch) and on_ready. */
#define GOEV_READ  0x1u
#define GOEV_WRITE 0x2u
#define GOEV_ERROR 0x4u  /* on_ready only: error or hang-up on the fd */

/* The callbacks of a handler.  Every member may be NULL unless said
 * otherwise.  All run on the poller thread of the handler.  A callback that
 * returns a negative value closes the handler (with that value as the
 * reason passed to on_close). */
struct goev_handler_ops {
    /* A connection is ready (accepted, connected, or adopted with
     * goev_conn_open).  Return 0, or < 0 to close it. */
    int (*on_open)(goev_handler *h);

    /* Bytes arrived.  data is valid only during the call.  Return how many
     * bytes were consumed (0..len); the unconsumed tail is kept by the
     * library and presented again, in front of the next bytes.  Return < 0
     * to close.  Required for stream connections. */
    ssize_t (*on_read)(goev_handler *h, const char *data, size_t len);

    /* The peer closed its side (EOF).  Return 0 to keep the connection
     * half-open (you may still write; call goev_close when done), or < 0 to
     * close.  If NULL, the connection is closed gracefully: what is queued
     * is sent first. */
    int (*on_eof)(goev_handler *h);

    /* The output queue became empty after the kernel had not taken it all
     * at once (back-pressure relieved), or became empty while reading is
     * paused (goev_pause_read): an application that pauses on
     * goev_pending() and resumes here always hears of it, even when the
     * kernel took a large queue in one go.  Return 0 or < 0 to close. */
    int (*on_drained)(goev_handler *h);

    /* A timer of this handler expired (t is the timer; a periodic one is
     * already rescheduled).  Return 0 or < 0 to close. */
    int (*on_timeout)(goev_handler *h, goev_timer *t);

    /* goev_connect failed: err is a negative errno (-ETIMEDOUT,
     * -ECONNREFUSED, -ENETUNREACH, -EHOSTUNREACH, ...) or, for a name,
     * GOEV_ENONAME, GOEV_EDNSTIMEDOUT or GOEV_EDNSFAIL (goev_strerror
     * names them all).  on_close follows. */
    void (*on_connect_fail)(goev_handler *h, int err);

    /* A watched raw fd is ready: events is a mask of GOEV_READ, GOEV_WRITE,
     * GOEV_ERROR.  Level-triggered: it is called again while the condition
     * holds.  Return 0 or < 0 to close (which closes the fd too unless the
     * watch was made with GOEV_WATCH_KEEP_FD). */
    int (*on_ready)(goev_handler *h, unsigned events);

    /* The handler is finished: called exactly once, always last, for every
     * handler that was opened, connected, watched or given a timer.  reason
     * is 0 for a normal close (goev_close, EOF), or a negative errno
     * (-ECONNRESET, -ETIMEDOUT, -ECANCELED at reactor stop, -ENOMEM when
     * the library could not keep unconsumed input or queue an async
     * write, or what a callback returned).  The fd is closed already; the memory of the
     * handler (and its timers) may be freed here. */
    void (*on_close)(goev_handler *h, int reason);

    /* A signal watched with goev_signal_watch arrived (see there).  Return
     * 0, or < 0 to close the watch.  Required for signal watches. */
    int (*on_signal)(goev_handler *h, const struct goev_siginfo *si);
};

/* Embed one of these in your own struct (container_of gets you back) and
 * initialise it with goev_handler_init.  The fields are private. */
struct goev_handler {
    const struct goev_handler_ops *ops;
    void *user;                 /* free for the application */
    goev_poller *poller_;       /* owning poller, set on first use */
    struct goev__conn *conn_;   /* connection state, NULL if none */
    goev_timer *timers_;        /* timers of this handler */
    uint32_t flags_;
};

/* Initialise h with its vtable.  Any thread (before h is used). */
GOEV_EXTERN void goev_handler_init(goev_handler *h, const struct goev_handler_ops *ops);

/* The poller that owns h (NULL before it is first attached; still the last
 * owner during and after on_close).  Poller thread. */
GOEV_EXTERN goev_poller *goev_handler_poller(const goev_handler *h);

/* Id of h's connection for goev_async_write (0 if h has none).
 * Poller thread. */
GOEV_EXTERN goev_conn_id goev_handler_id(const goev_handler *h);

/* The socket (or watched fd) of h, or -1: h has none (not attached, closed)
 * or its socket is an io_uring direct descriptor.  The fd stays the
 * library's: do not close it yourself; reading from it behind the
 * library's back loses data on io_uring.  Poller thread.
 *
 * Direct descriptors: on io_uring (kernel 6.8 and later), connections that
 * an acceptor opens on the poller that accepted them (one poller, or
 * reuseport on one reactor) are accepted into the ring's file table, not
 * the process's: no fd per connection, and the ring's recv/send/close skip
 * the fd lookup.  Their handler has no fd number (this function returns
 * -1) until goev_handler_fd_install gives it one.  The library's own
 * calls that need an fd do that for you, once per connection:
 * goev_peer_addr, goev_local_addr, the goev_set_* options, goev_sendfile
 * and goev_shutdown.  When the table is 7/8 full, accepts go on with
 * regular fds until it is below 3/4 again.  Outgoing connections
 * (goev_connect, pools), goev_conn_open and watches always use regular
 * fds, as does epoll.  The environment variable GOEV_URING_DIRECT=0 turns
 * direct descriptors off (every connection gets an fd, as on older
 * kernels); GOEV_URING_FILES=N sets the table's size per poller (8 to
 * RLIMIT_NOFILE; default RLIMIT_NOFILE, at most 65536).  Both are read
 * when a poller starts, and ignored in setuid programs. */
GOEV_EXTERN int goev_handler_fd(const goev_handler *h);

/* A regular fd for h's socket, for system calls of your own (setsockopt,
 * ioctl, getpeername ...).  For a direct descriptor (see goev_handler_fd)
 * the first call installs one (IORING_OP_FIXED_FD_INSTALL, one
 * io_uring_enter) and the connection goes on on that fd, unchanged for
 * the application; later calls, and every call for a connection that
 * already has an fd, return it at no cost.  Ownership as for
 * goev_handler_fd: the library closes it.  Returns the fd, -ENOTCONN (h not
 * attached, or closing), or another negative errno (-EBUSY, -EAGAIN: the
 * ring could not do it now; try again later).  Poller thread. */
GOEV_EXTERN int goev_handler_fd_install(goev_handler *h);

/* Close h.  Reading stops at once; what is queued for output is still sent
 * (a peer that never reads keeps the connection until it resets or you call
 * goev_abort); then the fd is closed, the timers are cancelled and on_close
 * is called with reason 0, later in the same loop pass or a later one -
 * never from inside goev_close.  Closing a handler twice is harmless.
 * "Sent" means handed to the kernel: on TCP, a socket closed while input
 * it has not read waits in the kernel (bytes the peer sent after reading
 * stopped) is reset (RFC 1122 4.2.2.13), and the kernel drops what it had
 * not transmitted yet.  Where the peer may still be sending, goev_shutdown
 * first and close in on_eof (or after a timeout) to be sure it gets all.
 * A TLS connection does part of that itself (see "TLS", closing): it
 * keeps reading while it closes, dropping what comes, and a TLS client
 * waits up to 2 s for the server's end before closing its fd, so on_close
 * may come that much later.
 * Returns 0, or -EINVAL if h was never attached.  Poller thread. */
GOEV_EXTERN int goev_close(goev_handler *h);

/* Close h now, dropping what is queued for output.  on_close follows with
 * reason -ECONNABORTED, as for goev_close.  Poller thread. */
GOEV_EXTERN int goev_abort(goev_handler *h);

/* ------------------------------------------------------------------------ */
/* Connections                                                              */

/* Adopt a connected stream socket fd (TCP or unix) on poller p.  The library
 * makes it non-blocking, owns it from now on (closes it at the end; keep no
 * duplicate of it, or epoll keeps reporting it after the close), calls
 * on_open and starts reading.  Returns 0, -EINVAL (h already in use, no
 * on_read), -ENOMEM; on failure fd is left open and h untouched.
 * Poller thread of p. */
GOEV_EXTERN int goev_conn_open(goev_poller *p, goev_handler *h, int fd);

/* Queue len bytes for output.  The bytes are copied; all writes of one loop
 * pass to one connection leave in one system call at the end of the pass.
 * Returns 0, -ENOTCONN (closing, shut down or no connection), -ENOMEM.
 * Poller thread. */
GOEV_EXTERN int goev_write(goev_handler *h, const void *data, size_t len);

/* Queue len bytes of the file fd, from offset, for output: ordered with
 * goev_write's bytes on the same connection (what was written before is
 * sent before, what is written after, after), and sent from the page cache
 * without passing through user-space buffers: sendfile(2) on both
 * backends (on io_uring, waiting for room with a POLLOUT in the ring; the
 * README's "Sending files" says why not SPLICE).  The library
 * takes a duplicate of fd (F_DUPFD_CLOEXEC), so the caller may close its own
 * at once; the duplicate is closed when the range has been sent or the
 * connection closes.  The range counts in goev_pending, and on_drained
 * works as for writes, so a paced or back-pressured sender can queue a
 * slice at a time.  The file is read as it is when the bytes go out: if it
 * shrinks below offset + len meanwhile, the connection is closed with
 * reason -ENODATA (the peer gets fewer bytes than announced, never others).
 * Returns 0 (len 0: nothing queued), -ENOTCONN (as goev_write), -EINVAL (fd
 * not a regular file or block device, range overflowing), -ENODATA (the
 * range ends past the end of the file now), -EMFILE (no descriptor for the
 * duplicate), -ENOMEM.  Poller thread. */
GOEV_EXTERN int goev_sendfile(goev_handler *h, int fd, uint64_t offset, uint64_t len);

/* Bytes queued for output and not yet taken by the kernel.  Use it for
 * back-pressure: stop producing past your limit and resume in on_drained.
 * On io_uring the kernel's taking is learnt from a send's completion, at
 * the poller's next pass: until then the bytes of a send in flight still
 * count, even if the peer has read them already.  Poller thread. */
GOEV_EXTERN size_t goev_pending(const goev_handler *h);

/* Set h's output watermarks (see goev_reactor_opts.out_high_water, whose
 * values every connection starts with): past `high` bytes queued at the end
 * of a pass goev stops reading h, and reads again once the queue is down
 * to `low`.  high 0 (or SIZE_MAX) turns the limit off for h.  A server that
 * answers requests needs nothing else to stay bounded against a peer that
 * never reads; one that produces output without input (a download, a
 * broadcast) still paces itself with goev_pending and on_drained.
 * Returns 0, -EINVAL (low >= high), -ENOTCONN (no stream connection).
 * Poller thread. */
GOEV_EXTERN int goev_set_watermarks(goev_handler *h, size_t high, size_t low);

/* Stop delivering input (bytes stay in the kernel: TCP pushes back on the
 * peer), and resume it.  Resuming presents a kept tail again even if no new
 * byte came.  Pausing is independent of the output watermarks: reading is
 * on when the application has not paused it and the output is not past the
 * high mark.  Return 0 or -ENOTCONN.  Poller thread. */
GOEV_EXTERN int goev_pause_read(goev_handler *h);
GOEV_EXTERN int goev_resume_read(goev_handler *h);

/* Half-close: once the output queue is empty, shut the write side down
 * (the peer sees EOF) and refuse further writes; reading goes on.  On TLS,
 * close_notify goes first (see "TLS", closing).
 * Returns 0 or -ENOTCONN.  Poller thread. */
GOEV_EXTERN int goev_shutdown(goev_handler *h);

/* Write to the connection named by id from any thread.  The bytes are
 * copied and handed to the owning poller; async writes to one connection
 * are delivered in the order they were made, each queued as by goev_write
 * and flushed at the end of that poller's pass.  Returns 0, -ENOTCONN if the
 * connection is already known to be gone, -EINVAL for a malformed id,
 * -ENOMEM (-ENOTCONN also once the owning poller has finished stopping).
 * A connection that closes after the call but before delivery drops the
 * bytes (counted in goev_stats.async_dropped); the call never touches freed
 * memory.  If the owning poller cannot queue the bytes (out of memory) it
 * closes the connection, on_close(h, -ENOMEM), rather than send the stream
 * with a hole in it (also counted in async_dropped).  Any thread. */
GOEV_EXTERN int goev_async_write(goev_reactor *r, goev_conn_id id, const void *data, size_t len);

/* Close the connection named by id from any thread, as goev_close would on
 * its poller: ordered after the async writes to id made before it by the
 * same thread (they are sent first), and after every message posted to that
 * poller before it.  Returns 0, -ENOTCONN, -EINVAL or -ENOMEM as
 * goev_async_write; a connection already gone is counted in
 * goev_stats.async_dropped.  Any thread. */
GOEV_EXTERN int goev_async_close(goev_reactor *r, goev_conn_id id);

/* ------------------------------------------------------------------------ */
/* Addresses and socket options                                             */

/* Address strings understood by the acceptor and connector:
 *   "1.2.3.4:80"   IPv4        ":80"          all IPv4 interfaces
 *   "[::1]:80"     IPv6        "unix:/path"   unix stream socket
 *   "unix:@name"   unix socket in the abstract namespace
 * goev_connect, goev_connect_ex and goev_pool_new also take "host:port"
 * (see goev_connect: resolved without blocking the poller); everything
 * else, goev_addr_parse included, is numeric only. */

/* Parse an address string as above into *ss (and its length into *len).
 * Returns 0 or -EINVAL.  Any thread. */
GOEV_EXTERN int goev_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* Errors of name resolution (see goev_connect).  Below -4095, so they never
 * collide with a negative errno; goev_strerror names them. */
#define GOEV_ENONAME      (-5001)   /* no such name, or no address for it */
#define GOEV_EDNSTIMEDOUT (-5002)   /* the name servers did not answer */
#define GOEV_EDNSFAIL     (-5003)   /* the lookup failed otherwise */
#define GOEV_ENORESOLV    (-5004)   /* built without name resolution (c-ares) */
/* Errors of TLS (see "TLS"). */
#define GOEV_ETLS         (-5010)   /* handshake failed (not TLS, no common ground, alert) */
#define GOEV_ETLSVERIFY   (-5011)   /* the peer's certificate did not verify */
#define GOEV_ETLSTIMEDOUT (-5012)   /* the handshake did not finish in time */
#define GOEV_ETLSPROTO    (-5013)   /* a bad record or fatal alert after the handshake */
#define GOEV_ETLSRENEG    (-5014)   /* the peer tried to renegotiate */
#define GOEV_ETLSTRUNC    (-5015)   /* the connection ended inside a record */
#define GOEV_ENOTLS       (-5016)   /* built without TLS (OpenSSL) */

/* A message for an error the library returned or passed to a callback: a
 * negative errno (as strerror) or one of the GOEV_E* codes above.  Static
 * storage, never NULL ("Unknown error" for anything else).  Any thread. */
GOEV_EXTERN const char *goev_strerror(int err);

/* Room for any string goev_addr_format writes, with its NUL. */
#define GOEV_ADDRSTRLEN 120

/* Write sa as an address string in the form above ("1.2.3.4:80",
 * "[::1]:80", "unix:/path", "unix:@name"; an unnamed unix socket, such as
 * the client end of a unix connection, is "unix:").  Returns the length
 * written (without the NUL), -ENOSPC if cap is too small (buf then holds ""
 * if cap > 0), -EAFNOSUPPORT for another family, -EINVAL for a truncated
 * address.  Any thread. */
GOEV_EXTERN int goev_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap);

/* The peer's and the local address of h's socket (getpeername /
 * getsockname), into *ss and *len.  Returns 0, -ENOTCONN (h has no
 * socket, or the peer is gone), or another negative errno.  Poller thread. */
GOEV_EXTERN int goev_peer_addr(const goev_handler *h, struct sockaddr_storage *ss, socklen_t *len);
GOEV_EXTERN int goev_local_addr(const goev_handler *h, struct sockaddr_storage *ss, socklen_t *len);

/* Socket options of a connection (TCP; the buffer sizes also work on unix
 * sockets).  Each returns 0, -ENOTCONN (no socket), -EINVAL (a bad value),
 * or setsockopt's error (-EOPNOTSUPP on a unix socket for TCP options).
 * Poller thread.
 *
 * goev_set_nodelay: TCP_NODELAY on (non-zero) or off.  Accepted and
 *   connected sockets have it on unless their options said otherwise.
 * goev_set_keepalive: idle_s > 0 turns SO_KEEPALIVE on with the first probe
 *   after idle_s seconds of silence, then every interval_s seconds, and the
 *   connection dropped (on_close with -ETIMEDOUT) after count unanswered
 *   probes; 0 for interval_s or count keeps the kernel's default.
 *   idle_s == 0 turns keepalive off.
 * goev_set_sndbuf / goev_set_rcvbuf: SO_SNDBUF / SO_RCVBUF in bytes (the
 *   kernel doubles the value and clamps it to net.core.[wr]mem_max).
 *   Setting the receive buffer after the connection is up does not widen
 *   the TCP window scale: for big buffers use the acceptor's or connector's
 *   options, which apply before the handshake. */
GOEV_EXTERN int goev_set_nodelay(goev_handler *h, int on);
GOEV_EXTERN int goev_set_keepalive(goev_handler *h, int idle_s, int interval_s, int count);
GOEV_EXTERN int goev_set_sndbuf(goev_handler *h, int bytes);
GOEV_EXTERN int goev_set_rcvbuf(goev_handler *h, int bytes);

/* ------------------------------------------------------------------------ */
/* Acceptor                                                                 */

struct goev_acceptor_opts {
    int backlog;        /* listen backlog; 0 = 4096 */
    int reuseaddr;      /* SO_REUSEADDR; default on (the opts_init value 1) */
    int reuseport;      /* SO_REUSEPORT with one listener per poller of the
                           accepting reactor; each accepts for itself */
    int rcvbuf;         /* SO_RCVBUF on the listener (inherited); 0 = leave */
    int no_nodelay;     /* non-zero: do not set TCP_NODELAY (default: set) */
    int backoff_ms;     /* pause after EMFILE/ENFILE/ENOBUFS/ENOMEM; 0 = 100 */
    int unlink_unix;    /* unix: unlink a stale socket file first; default 1 */
    int sndbuf;         /* SO_SNDBUF of accepted sockets; 0 = leave */
    /* TCP keepalive of accepted sockets, as goev_set_keepalive; 0 = off */
    int keepalive_idle, keepalive_interval, keepalive_count;
    /* Serve TLS with this server context (goev_tls_ctx_new(..., 1, ...)):
     * every accepted connection does the handshake first, and its
     * handler sees plaintext only (see "TLS").  NULL = plain TCP.  The
     * acceptor keeps a reference, so the caller may free its own at
     * once. */
    goev_tls_ctx *tls;
};

/* Defaults: backlog 4096, reuseaddr 1, unlink_unix 1, the rest 0.  The
 * socket options are set once on the listening socket, which Linux copies
 * to every socket it accepts: no system call per connection. */
GOEV_EXTERN void goev_acceptor_opts_init(struct goev_acceptor_opts *o);

/* Make a handler for a new connection on poller p (on p's thread).  Return
 * an initialised handler, or NULL to refuse (the socket is closed).  If the
 * library then cannot take the connection on (out of memory), the socket is
 * closed and the handler's on_close is called with the error, so that its
 * memory is released the usual way. */
typedef goev_handler *(*goev_new_handler_fn)(goev_poller *p, void *arg);

/* Listen on addr.  Connections are accepted by poller 0 of accept_r (or, with
 * reuseport, by every poller of accept_r) and handed round-robin to the
 * pollers of conn_r (which may be accept_r), where new_handler and on_open
 * run.  On EMFILE/ENFILE/ENOBUFS/ENOMEM a listener stops accepting for
 * backoff_ms instead of spinning.  Returns 0 and *out, or -EINVAL (bad
 * address), -EADDRINUSE, -EACCES, -ENOMEM ...  Bind errors are reported here,
 * synchronously.  Call before the reactors run, from the creating thread. */
GOEV_EXTERN int goev_acceptor_new(goev_acceptor **out, goev_reactor *accept_r,
                                  goev_reactor *conn_r, const char *addr,
                                  const struct goev_acceptor_opts *opts,
                                  goev_new_handler_fn new_handler, void *arg);

/* The port actually bound (useful with port 0), or 0 for unix sockets. */
GOEV_EXTERN int goev_acceptor_port(const goev_acceptor *a);

/* Close the listening sockets and free a.  Call after the reactors stopped
 * (or before they ran).  Connections already accepted are not affected.
 * A unix socket file is removed.  NULL is a no-op. */
GOEV_EXTERN void goev_acceptor_free(goev_acceptor *a);

/* ------------------------------------------------------------------------ */
/* Connector                                                                */

/* Connect to addr from poller p without blocking.  On success on_open is
 * called and the connection works as an accepted one; on failure, or if
 * timeout_ms (> 0) passes first, on_connect_fail(h, err) then on_close(h,
 * err).  Returns 0 (the outcome comes through callbacks), or -EINVAL (bad
 * address, h in use), -ENOMEM, -EMFILE, or an immediate connect error; on
 * failure no callback is called.  Poller thread of p.
 *
 * Names: addr may be "host:port" (a DNS name or a name of /etc/hosts, e.g.
 * "localhost:8080", "db.example.com:5432").  Numeric addresses take the
 * path above and never touch the resolver.  A name is looked up without
 * blocking the poller, by c-ares on p's own watches and timers (both
 * backends): the hosts file first, then DNS as resolv.conf says (servers,
 * search domains, options: c-ares 1.18 knows ndots:, retrans: in ms,
 * retry: and rotate, later versions glibc's timeout: and attempts: too;
 * its defaults are 5 s and 4 tries per server), A and AAAA records, in
 * the order c-ares sorts them (RFC 6724).  The addresses are tried one
 * after the other until one connects; the error of the last one is the
 * outcome.  With a bind_addr, only addresses of its family are asked for.
 * Answers are cached per poller for their DNS TTL (hosts-file answers and
 * failures are not cached), and connects to one name while its lookup is
 * in flight share it; goev_stats counts resolves, resolve_hits and
 * connect_next.  timeout_ms bounds the whole: lookup and every attempt.
 * A name that does not resolve ends in on_connect_fail(h, err), then
 * on_close(h, err), with err:
 *   GOEV_ENONAME       no such name (NXDOMAIN), or no A/AAAA record for it;
 *   GOEV_EDNSTIMEDOUT  the name servers did not answer (resolv.conf's
 *                      timeout and attempts);
 *   GOEV_EDNSFAIL      another DNS failure (SERVFAIL, REFUSED, a malformed
 *                      answer, no server reachable);
 *   -ETIMEDOUT         timeout_ms passed first; -ENOMEM.
 * goev_close or goev_abort during the lookup cancels it cleanly: no
 * callback but on_close.  So does the reactor's stop (on_close with
 * -ECANCELED); the lookups still in flight are freed with the reactor.
 * Returned at once: -EINVAL (a malformed name, a port past 65535),
 * GOEV_ENORESOLV (goev built without c-ares), or the resolver's set-up
 * error the first time a poller needs it (-ENOMEM, -EINVAL for a bad
 * GOEV_DNS_SERVERS, -ENOENT for a missing GOEV_RESOLV_CONF).  A cached
 * name whose addresses all fail at once returns the last error, as a
 * numeric one would.  Until on_open the handler is connecting: writes are
 * queued, goev_handler_fd is -1 while the name is looked up.
 *
 * The resolver's configuration is read when a poller first needs it:
 *   GOEV_RESOLV_CONF=path   a resolv.conf to read instead of /etc/resolv.conf
 *   GOEV_DNS_SERVERS=list   name servers to ask instead of resolv.conf's:
 *                           "127.0.0.1:5353,[::1]:53,192.0.2.1"
 *   CARES_HOSTS=path        a hosts file to read instead of /etc/hosts
 *   RES_OPTIONS, LOCALDOMAIN  as for the libc resolver (c-ares reads them)
 * (ignored in setuid programs).  c-ares reads the files once per poller,
 * and the hosts file at each lookup, synchronously: they are local files.
 * c-ares's own allocations do not go through goev_replace_allocator. */
GOEV_EXTERN int goev_connect(goev_poller *p, goev_handler *h, const char *addr, int timeout_ms);

/* Options of goev_connect_ex.  Initialise with goev_connect_opts_init. */
struct goev_connect_opts {
    int timeout_ms;         /* > 0: fail with -ETIMEDOUT after this long */
    const char *bind_addr;  /* local address to bind first ("127.0.0.2:0",
                               "[::1]:4000", "unix:/path"); NULL = any */
    int no_nodelay;         /* non-zero: leave TCP_NODELAY off (default on) */
    int sndbuf, rcvbuf;     /* SO_SNDBUF / SO_RCVBUF, set before connecting
                               (so the window scale fits); 0 = leave */
    /* TCP keepalive, as goev_set_keepalive; keepalive_idle 0 = off */
    int keepalive_idle, keepalive_interval, keepalive_count;
    /* Speak TLS with this client context (goev_tls_ctx_new(..., 0, ...)):
     * the handshake follows the TCP connect, and on_open comes after it
     * (see "TLS").  NULL = plain TCP.  The connection keeps its own
     * reference to the context. */
    goev_tls_ctx *tls;
    /* The name sent as SNI and checked against the server's certificate.
     * NULL = the host of "host:port" for a name, or for a numeric address
     * no SNI and the IP checked against the certificate's IP entries.
     * Copied. */
    const char *tls_server_name;
};

/* All zero: no timeout, no bind, TCP_NODELAY on, kernel defaults. */
GOEV_EXTERN void goev_connect_opts_init(struct goev_connect_opts *o);

/* goev_connect with options (opts may be NULL for the defaults).  The
 * local address is bound with SO_REUSEADDR off; binding a port in use fails
 * here with -EADDRINUSE.  A unix connection ignores the TCP options.  Same
 * returns and callbacks as goev_connect.  Poller thread of p. */
GOEV_EXTERN int goev_connect_ex(goev_poller *p, goev_handler *h, const char *addr,
                                const struct goev_connect_opts *opts);

/* ------------------------------------------------------------------------ */
/* Raw fd watches                                                           */

#define GOEV_WATCH_KEEP_FD 0x100u  /* do not close the fd when the handler closes */

/* Watch fd (eventfd, pipe, timerfd, signalfd, UDP socket...) for readiness
 * on poller p; events = GOEV_READ and/or GOEV_WRITE, optionally with
 * GOEV_WATCH_KEEP_FD.  on_ready (required) is called while the fd is ready.
 * goev_close(h) ends the watch.  Returns 0, -EINVAL (bad events, h already
 * in use, no on_ready), -ENOMEM.
 * Poller thread of p. */
GOEV_EXTERN int goev_watch(goev_poller *p, goev_handler *h, int fd, unsigned events);

/* Change the events of a watch (GOEV_READ and/or GOEV_WRITE; 0 = none for
 * now).  Returns 0 or -EINVAL.  Poller thread. */
GOEV_EXTERN int goev_watch_update(goev_handler *h, unsigned events);

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */

/* Receive the signals of set as events: h's on_signal is called on p's
 * thread, once for every signal the kernel delivers (a standard signal sent
 * again while still pending is merged into one by the kernel, as always;
 * real-time signals queue and each one comes).  Works the same on both
 * backends (a signalfd, watched for reading).  goev_close(h) ends the watch
 * (on_close follows); the signals then stay blocked and pending ones stay
 * pending.
 *
 * Signal masks - the application's part:
 *   A signal that some thread does not block is delivered to that thread
 *   the traditional way (its handler, or the default action: SIGTERM and
 *   SIGINT end the process), and never reaches the watch.  This call blocks
 *   set in the calling thread; every other thread of the process must block
 *   it too.  Poller threads started by goev block every signal already.  The
 *   simplest correct program calls goev_signal_watch (or pthread_sigmask)
 *   on its main thread before it creates any thread (threads inherit the
 *   mask), e.g. before goev_reactor_run, which then runs poller 0 on that
 *   thread.  Called from a poller thread while the reactor runs, it changes
 *   only that thread's mask: the application's own threads (the one in
 *   goev_reactor_wait, for one) must block set themselves.
 *   Signals sent to one thread (pthread_kill, or faults such as SIGSEGV) are
 *   only seen if that thread is p's.  Watch each signal once per process:
 *   two watches of one signal race for it.  SIGKILL and SIGSTOP cannot be
 *   caught.
 *
 * Returns 0, -EINVAL (set empty or holding SIGKILL/SIGSTOP, h in use, no
 * on_signal), -ENOMEM, -EMFILE.  Poller thread of p (or, before the
 * reactor runs, the creating thread). */
GOEV_EXTERN int goev_signal_watch(goev_poller *p, goev_handler *h, const sigset_t *set);

/* ------------------------------------------------------------------------ */
/* Timers                                                                   */

/* Embed a goev_timer anywhere (usually next to its handler).  The fields are
 * private; `user` is free for the application. */
struct goev_timer {
    uint64_t when_;         /* expiry, poller milliseconds */
    uint64_t period_;       /* 0 = one-shot */
    uint64_t seq_;          /* start order: breaks ties between equal when_ */
    uint32_t idx_;          /* position in the heap, UINT32_MAX when idle */
    goev_handler *h_;
    goev_timer *prev_, *next_;
    void *user;
};

/* Initialise t (idle).  Any thread, before first use. */
GOEV_EXTERN void goev_timer_init(goev_timer *t);

/* Schedule t for h on poller p: on_timeout(h, t) after delay_ms, then every
 * period_ms if period_ms > 0.  h is attached to p if it was not attached
 * yet (a handler with only timers is closed with goev_close like any other).
 * Restarting a scheduled timer reschedules it.  A handler may own any number
 * of timers; closing the handler cancels them.  O(log n).
 *
 * Time: delays count from the poller's clock of the current pass; before
 * the reactor runs (setup on the creating thread) the clock is read at
 * this call, so a timer set up before goev_reactor_run counts from when it
 * was started.  Timers whose deadlines are equal fire in the order they
 * were started (restarting counts as starting).  A periodic timer's next
 * deadline is the last one plus period_ms (no drift), or later if the loop
 * fell behind by more than a period (missed periods are skipped, not
 * fired in a burst).  A delay or period too large for the clock (up to
 * UINT64_MAX) saturates: the timer never fires (again), it does not wrap.
 *
 * t must stay valid while active (see CONVENTIONS).  Returns 0, -EINVAL
 * (h owned by another poller, h closing, no on_timeout), -ENOMEM.  Poller
 * thread (or, before the reactor runs, the creating thread). */
GOEV_EXTERN int goev_timer_start(goev_poller *p, goev_handler *h, goev_timer *t,
                                 uint64_t delay_ms, uint64_t period_ms);

/* Cancel t; it will not fire (not even if it expired in the current pass).
 * O(log n).  Cancelling an idle timer is harmless.  Returns 0.
 * Poller thread. */
GOEV_EXTERN int goev_timer_cancel(goev_timer *t);

/* Non-zero if t is scheduled.  Poller thread. */
GOEV_EXTERN int goev_timer_active(const goev_timer *t);

/* ------------------------------------------------------------------------ */
/* TLS                                                                      */

/* TLS is a layer of the connection, between the backend and the handler,
 * so that one handler works with and without it: on_read receives
 * plaintext; goev_write, goev_async_write and goev_sendfile take
 * plaintext and the library encrypts it; goev_shutdown and goev_close
 * send close_notify first.  The work is OpenSSL 3's (goev built with
 * libssl; without it goev_tls_ctx_new returns GOEV_ENOTLS); the bytes come
 * and go through the backend's usual path (epoll's read buffer, io_uring's
 * provided buffers and SENDs): a BIO of goev's copies the bytes from the
 * backend's buffer into OpenSSL's record buffer (where OpenSSL decrypts
 * in place: the one copy a socket BIO's read(2) would make too, without
 * the system call), and appends the records OpenSSL makes to the
 * connection's output queue.  The plaintext goes to on_read from a
 * per-poller 64 KiB buffer, up to 64 KiB per call.  OpenSSL keeps its
 * record buffers only while a record is in progress
 * (SSL_MODE_RELEASE_BUFFERS); an idle TLS connection still costs its SSL
 * object, session and keys: about 15 KiB on top of a plain one (OpenSSL
 * 3.0, measured with 2000 idle connections).
 *
 * Server: set goev_acceptor_opts.tls.  Client: set goev_connect_opts.tls
 * (goev_connect_ex, or goev_pool_opts.connect for pooled TLS connections).
 *
 * The handshake runs before on_open: an accepted or connected connection
 * is the library's until the handshake has finished, then on_open is
 * called as for plain TCP.  Writes made before (a client's first request)
 * are queued and encrypted once the handshake is done.  It has
 * handshake_timeout_ms to finish.  A connection whose handshake fails is
 * closed: on a client, on_connect_fail(h, err) then on_close(h, err), as
 * for a failed connect (pools back off as for a refused connect); on a
 * server, on_close(h, err), with err one of:
 *   GOEV_ETLS          not TLS, no common version or cipher, the peer sent
 *                      an alert, or hung up during the handshake;
 *   GOEV_ETLSVERIFY    the peer's certificate did not verify (unknown CA,
 *                      expired, wrong name);
 *   GOEV_ETLSTIMEDOUT  the handshake took longer than handshake_timeout_ms;
 * or a socket error as on TCP (-ECONNRESET: the peer reset mid-handshake;
 * not counted in goev_stats.tls_failures, which counts GOEV_ETLS* only).
 * After the handshake a connection closes with:
 *   GOEV_ETLSPROTO     a record that does not decrypt or parse, a fatal
 *                      alert from the peer;
 *   GOEV_ETLSRENEG     the peer asked to renegotiate (TLS 1.2): refused;
 *   GOEV_ETLSTRUNC     the connection ended in the middle of a record.
 * An EOF after the peer's close_notify, or at a record boundary without
 * one (many clients just close), is EOF as on TCP: on_eof.
 *
 * Closing (goev_close, or on_eof returning < 0 or being NULL): the
 * plaintext still queued is encrypted and sent, then close_notify.  Until
 * then the connection goes on reading - whatever goev_pause_read or the
 * watermarks said - and feeds what comes to OpenSSL without delivering
 * it (no on_read after goev_close): a peer may well still be sending (a
 * TLS 1.3 server's session tickets come after the handshake, an answer
 * may be in flight), and a socket closed with bytes unread is reset by
 * the kernel, which then drops the output it still holds - the peer would
 * lose the end of what was written.  A server closes its fd once its
 * close_notify is handed to the kernel.  A client then shuts its write
 * side (the server sees EOF after the close_notify) and waits, reading
 * and dropping, for the server's close_notify or EOF, at most 2 s, before
 * closing its fd; on_close(h, 0) comes after that either way (also when
 * the reactor stops meanwhile: its output is all out).  A reset, or a
 * TLS error in what comes meanwhile (a bad record, a truncated one),
 * overtakes the close: on_close gets that reason.  goev_shutdown sends
 * close_notify when the queue is out, then shuts the write side; reading
 * and on_read go on as on TCP (TLS 1.3 peers may answer after it; a TLS
 * 1.2 peer usually answers with its own close_notify: on_eof).
 * goev_tls_error_string() tells OpenSSL's reason for the last of these on
 * the calling thread (in on_close, say).  OpenSSL's error queue is left
 * empty after every call goev makes.
 *
 * goev_sendfile on a TLS connection reads the file with pread, a slice of
 * at most the output high-water mark at a time, and encrypts it: ordered,
 * bounded in memory, but through user space (kernel TLS would avoid that,
 * see below).
 *
 * Kernel TLS: goev probes the kernel's "tls" TCP upper layer once per
 * process (GOEV_DEBUG prints the result) and reports it in
 * goev_tls_info.ktls_tx/ktls_rx.  This version always encrypts in user
 * space: ktls_* are 0.
 *
 * Threads: a context may be used by every poller of every reactor at
 * once; it is reference-counted (the acceptors and connections using it
 * hold references), so goev_tls_ctx_free may be called as soon as nothing
 * new will be given it. */

struct goev_tls_opts {
    /* PEM certificate, followed by its chain (server: required; client:
     * optional, a client certificate). */
    const char *cert_file;
    /* PEM private key of cert_file; NULL = in cert_file. */
    const char *key_file;
    /* Verify the peer against the CAs of this PEM file and/or directory
     * (c_rehash layout).  Client: both NULL = the system's store
     * (/etc/ssl/certs).  Server: used when verify_client is set. */
    const char *ca_file;
    const char *ca_dir;
    /* Client: non-zero skips verifying the server's certificate and name
     * (accepts anyone: for tests only).  The default verifies. */
    int no_verify;
    /* Server: non-zero asks every client for a certificate and refuses
     * one without a certificate that verifies against ca_file/ca_dir
     * (GOEV_ETLSVERIFY).  The default asks for none. */
    int verify_client;
    /* ALPN: a comma-separated list such as "h2,http/1.1".  Client: offered
     * in this order.  Server: accepted in this order of preference; a
     * client that offers none of them is served without ALPN.  NULL =
     * no ALPN. */
    const char *alpn;
    /* The handshake must finish within this (0 = 10000 ms; < 0 = no
     * limit). */
    int handshake_timeout_ms;
    /* Oldest protocol version accepted: 0 or 12 = TLS 1.2, 13 = TLS 1.3. */
    int min_version;
    /* OpenSSL cipher list for TLS 1.2 and ciphersuites for TLS 1.3; NULL
     * = OpenSSL's defaults. */
    const char *ciphers;
    const char *ciphersuites;
    /* Client: non-zero keeps no sessions.  By default a client context
     * keeps the sessions servers give (TLS 1.3 tickets; TLS 1.2 tickets
     * or session IDs), by the name verified (SNI, else the numeric
     * address; names of 64 bytes or more keep none), up to 4 for each of
     * 64 names, and the next connection to
     * that name offers one: a resumed handshake sends and verifies no
     * certificate (goev_tls_info.resumed).  Each is offered once; a server
     * that does not know it makes a full handshake instead. */
    int no_session_cache;
};

/* Fill *o with the defaults (all zero: see each field).  Any thread. */
GOEV_EXTERN void goev_tls_opts_init(struct goev_tls_opts *o);

/* Make a TLS context: server != 0 for an acceptor, 0 for connects.  The
 * files are read now.  Returns 0 and *out, or GOEV_ENOTLS (built without
 * OpenSSL), -EINVAL (bad option: a server without cert_file, verify_client without CAs, a malformed
 * ALPN list, an unknown cipher, min_version not 0/12/13), -ENOENT (a file
 * missing), GOEV_ETLS (a file OpenSSL cannot use: not PEM, key not
 * matching the certificate; goev_tls_error_string says why), -ENOMEM.
 * Any thread. */
GOEV_EXTERN int goev_tls_ctx_new(goev_tls_ctx **out, int server, const struct goev_tls_opts *o);

/* Server contexts: serve cert_file/key_file to clients whose SNI asks for
 * name ("api.example.com", or "*.example.com" for any one label in its
 * place; matched without case).  Names are tried in the order added;
 * a client asking for no name or another one gets the context's own
 * certificate.  ALPN, verification and versions stay the context's.
 * Returns 0, -EINVAL (client context, bad name), -ENOENT, GOEV_ETLS,
 * -ENOMEM.  Call before the context is given to an acceptor. */
GOEV_EXTERN int goev_tls_ctx_add_sni(goev_tls_ctx *ctx, const char *name, const char *cert_file,
                                     const char *key_file);

/* Drop the caller's reference: the context goes when the acceptors and
 * connections using it are gone too.  NULL is a no-op.  Any thread. */
GOEV_EXTERN void goev_tls_ctx_free(goev_tls_ctx *ctx);

/* What a TLS connection negotiated. */
struct goev_tls_info {
    char version[16];       /* "TLSv1.3", "TLSv1.2" */
    char cipher[64];        /* "TLS_AES_256_GCM_SHA384", ... */
    char alpn[256];         /* the protocol agreed by ALPN, "" if none */
    char server_name[256];  /* SNI: asked for by the client (server side), or
                               sent (client side); "" if none */
    int peer_verified;      /* the peer's certificate was verified */
    int has_peer_cert;      /* the peer presented a certificate */
    int resumed;            /* the handshake resumed an earlier session
                               (see goev_tls_opts.no_session_cache) */
    int ktls_tx, ktls_rx;   /* kernel TLS in use for sending, receiving */
};

/* Fill *out for h's connection.  Returns 0, -EINVAL (h is not a TLS
 * connection), -EAGAIN (the handshake has not finished: before on_open),
 * -ENOTCONN (h has no connection).  Poller thread. */
GOEV_EXTERN int goev_tls_info_get(const goev_handler *h, struct goev_tls_info *out);

/* The subject of the peer's certificate, one line in RFC 2253 form
 * ("CN=client,O=Example"), into buf.  Returns its length (without the
 * NUL), -ENOENT (the peer sent no certificate), -ENOSPC (cap too small;
 * buf holds "" if cap > 0), or as goev_tls_info_get.  Poller thread. */
GOEV_EXTERN int goev_tls_peer_subject(const goev_handler *h, char *buf, size_t cap);

/* OpenSSL's reason (e.g. "tls_early_post_process_client_hello: unsupported
 * protocol") for the last TLS failure that closed a connection, or made
 * goev_tls_ctx_new fail, on the calling thread; "" if none.  Thread-local
 * storage, overwritten by the next failure and kept until then (a good
 * connection does not clear it).  Of OpenSSL's queue of errors the first
 * of its SSL layer is kept ("decryption failed or bad record mac", not the
 * cipher provider's "cipher operation failed" before it). */
GOEV_EXTERN const char *goev_tls_error_string(void);

/* ------------------------------------------------------------------------ */
/* Connection pool                                                          */

/* A pool of client connections to one address, owned by one poller (one
 * pool per poller and address; nothing in it is locked, and every function
 * below is for that poller's thread - or, before the reactor runs, the
 * creating thread).  The pool keeps min_idle connections ready, never has
 * more than max_live open or opening, and hands them out:
 *
 *   goev_pool_try_acquire   an idle connection at once, or NULL;
 *   goev_pool_acquire       a callback with a connection as soon as one is
 *                           free or newly connected, first come first
 *                           served, or with an error (timeout, pool freed);
 *   goev_pool_release       the connection back to idle (or closed).
 *
 * Who gets a pooled connection's callbacks:
 *   - while acquired: the application, through opts.ops (on_read required;
 *     on_eof, on_drained, on_timeout and on_close used; on_open,
 *     on_connect_fail, on_ready and on_signal never called).  h->user is the
 *     application's for the lease.  Timers started on the connection belong
 *     to the lease.  If the connection closes while acquired (the peer
 *     closed it, an error, goev_close), on_close(h, reason) ends the lease:
 *     the handler is the pool's, do not free it, and do not release it.
 *   - while idle or connecting: the pool.  An idle connection that gets
 *     EOF, a reset or unexpected bytes is closed and replaced.
 *
 * Refilling: whenever idle connections fall below min_idle, or requests
 * wait, the pool starts up to add_batch connects at once (all min_idle of
 * them when it has none at all), within max_live.  After a connect fails,
 * the next attempt waits backoff_min_ms, doubling with every further
 * failure up to backoff_max_ms, and back to none after a success.  A failed
 * attempt while the pool has no connection open or opening fails the
 * requests that were waiting, with the connect's error (-ECONNREFUSED,
 * -ETIMEDOUT, ...): a dead server answers waiters at once, not at their
 * timeouts.  Idle connections unused for idle_timeout_ms are closed, down
 * to min_idle. */
typedef struct goev_pool goev_pool;
typedef struct goev_pool_req goev_pool_req;

struct goev_pool_opts {
    int min_idle;           /* idle connections kept ready; default 1 */
    int max_live;           /* open + opening connections at most; default 64 */
    int add_batch;          /* connects started at once when short; default 4 */
    int connect_timeout_ms; /* default 3000 */
    int idle_timeout_ms;    /* default 60000; 0 = never */
    int backoff_min_ms;     /* default 100 */
    int backoff_max_ms;     /* default 10000 */
    /* Socket options of the pool's connections (timeout_ms is ignored:
     * connect_timeout_ms rules).  bind_addr is copied. */
    struct goev_connect_opts connect;
    /* The callbacks of acquired connections; required (with on_read). */
    const struct goev_handler_ops *ops;
};

/* The defaults above.  Any thread. */
GOEV_EXTERN void goev_pool_opts_init(struct goev_pool_opts *o);

/* Create a pool on poller p for addr (an address string as for
 * goev_connect: "host:port" too, each connect then resolving it through
 * the poller's cache, see goev_connect; a name that does not resolve fails
 * waiters with GOEV_ENONAME and backs off like a refused connect) and
 * start connecting up to min_idle.  Returns 0 and *out, or -EINVAL (bad
 * address or options: min_idle > max_live, max_live < 1, add_batch < 1, no
 * ops->on_read), GOEV_ENORESOLV (a name, and no c-ares), -ENOMEM.  Poller
 * thread of p. */
GOEV_EXTERN int goev_pool_new(goev_pool **out, goev_poller *p, const char *addr,
                              const struct goev_pool_opts *opts);

/* An idle connection, now acquired by the caller, or NULL if none is idle
 * or requests are already waiting (they come first).  Never waits and
 * never calls back.  Poller thread. */
GOEV_EXTERN goev_handler *goev_pool_try_acquire(goev_pool *pool);

/* The callback of goev_pool_acquire: conn acquired (err 0), or conn NULL
 * and err -ETIMEDOUT (timeout_ms passed), -ECANCELED (pool freed or its
 * reactor stopping), or a connect error (see "Refilling").  Called exactly
 * once per successful goev_pool_acquire (not after goev_pool_cancel), on
 * the pool's poller thread, never from inside goev_pool_acquire. */
typedef void (*goev_pool_cb)(goev_pool_req *req, goev_handler *conn, int err);

/* A request: caller-owned memory (embed it, like a timer), idle when not
 * waiting.  The fields are private; `user` is free for the application. */
struct goev_pool_req {
    goev_pool_cb cb_;
    goev_pool *pool_;
    goev_pool_req *prev_, *next_;
    goev_timer timer_;
    void *user;
};

/* Initialise req (idle).  Any thread, before first use. */
GOEV_EXTERN void goev_pool_req_init(goev_pool_req *req);

/* Ask for a connection: cb(req, conn, 0) as soon as one is free (at once,
 * i.e. at the start of the next loop pass, if one is idle and nobody waits
 * before), in the order of the calls; or cb(req, NULL, err).  timeout_ms >
 * 0 bounds the wait; 0 waits without limit.  req must stay valid until cb
 * or goev_pool_cancel.  Returns 0, -EINVAL (no cb), -EBUSY (req is already
 * waiting), -ESHUTDOWN (pool being freed, reactor stopping), -ENOMEM.
 * Poller thread. */
GOEV_EXTERN int goev_pool_acquire(goev_pool *pool, goev_pool_req *req, int timeout_ms,
                                  goev_pool_cb cb);

/* Withdraw a waiting request: its callback will not be called.  Returns 0,
 * or -ENOENT if req was not waiting (its callback ran already, or it never
 * was).  Poller thread. */
GOEV_EXTERN int goev_pool_cancel(goev_pool_req *req);

/* End the lease of an acquired connection.  reuse != 0 returns it to idle
 * if it is healthy: open, not half-closed by the peer, and with no input
 * left unconsumed (called from on_read, the bytes that on_read does not
 * consume count as unconsumed).  Otherwise, or with reuse == 0, it is
 * closed (gracefully: queued output still leaves) and replaced.  Output
 * still queued does not make it unhealthy: it is sent while idle.  The
 * lease's timers are cancelled; no callback of the lease comes after this
 * call, not even on_close.  Returns 0, or -EINVAL if conn is not an acquired
 * connection of a pool.  Poller thread. */
GOEV_EXTERN int goev_pool_release(goev_handler *conn, int reuse);

/* Free the pool: waiting requests get cb(req, NULL, -ECANCELED) here,
 * during the call; acquired connections close with on_close(h,
 * -ECANCELED); idle ones close.  The pool's memory goes when the last of
 * its connections has closed (maybe after this returns); the pointer is
 * dead at once.  Call on the poller thread while the reactor runs, or after
 * it stopped (then all its connections are closed already and only memory
 * is freed).  NULL is a no-op. */
GOEV_EXTERN void goev_pool_free(goev_pool *pool);

struct goev_pool_stats {
    unsigned idle;          /* connected, waiting to be acquired */
    unsigned acquired;      /* leased to the application */
    unsigned live;          /* idle + acquired */
    unsigned connecting;
    unsigned waiting;       /* requests queued in goev_pool_acquire */
    unsigned peak;          /* most live + connecting at once, ever */
    uint64_t created;       /* connects that succeeded */
    uint64_t failed;        /* connects that failed */
    uint64_t closed;        /* established connections closed */
    uint64_t acquires;      /* connections handed out */
    uint64_t timeouts;      /* requests that timed out */
};

/* Copy pool's counters.  Returns 0 or -EINVAL.  Poller thread. */
GOEV_EXTERN int goev_pool_stats_get(const goev_pool *pool, struct goev_pool_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* GOEV_H */
