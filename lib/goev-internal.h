/* goev-internal.h - what the core and the backends share.  Not installed.
 *
 * The seam: a backend is one `const struct goev__backend` (backends/epoll.c,
 * backends/io_uring.c); the core calls it through p->be, and the backend
 * calls back into the core through the goev__on_* functions below.  Nothing
 * outside backends/ includes <sys/epoll.h> or <liburing.h>. */
#ifndef GOEV_INTERNAL_H
#define GOEV_INTERNAL_H

#define GOEV_BUILDING 1
#include "goev.h"

#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define GOEV__HIDDEN __attribute__((visibility("hidden")))
#define GOEV__LIKELY(x) __builtin_expect(!!(x), 1)
#define GOEV__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define goev__container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

/* Counters: written by one poller, read anywhere with relaxed loads. */
#define GOEV__STAT_ADD(p, field, n) \
    __atomic_store_n(&(p)->stats.field, (p)->stats.field + (n), __ATOMIC_RELAXED)
#define GOEV__STAT_INC(p, field) GOEV__STAT_ADD(p, field, 1)

/* ---- memory --------------------------------------------------------------- */

/* Every allocation of the library goes through these (alloc.c), so that
 * goev_replace_allocator can route them elsewhere. */
struct goev__allocator {
    goev_malloc_fn malloc;
    goev_realloc_fn realloc;
    goev_calloc_fn calloc;
    goev_free_fn free;
};
GOEV__HIDDEN extern struct goev__allocator goev__alloc;
#define goev__malloc(n) (goev__alloc.malloc(n))
#define goev__realloc(ptr, n) (goev__alloc.realloc((ptr), (n)))
#define goev__calloc(k, n) (goev__alloc.calloc((k), (n)))
#define goev__free(ptr) (goev__alloc.free(ptr))

/* ---- buffers ------------------------------------------------------------ */

/* Size-class allocator, one per poller, no locks.  Classes are powers of two
 * from 64 B to 1 MiB; larger blocks go straight to malloc.  Freed blocks are
 * kept on per-class free lists up to a byte budget. */
#define GOEV__POOL_MIN_SHIFT 6
#define GOEV__POOL_MAX_SHIFT 20
#define GOEV__POOL_CLASSES (GOEV__POOL_MAX_SHIFT - GOEV__POOL_MIN_SHIFT + 1)

struct goev__pool {
    void *free[GOEV__POOL_CLASSES];
    size_t kept;    /* bytes on the free lists */
    size_t budget;  /* most bytes kept */
};

GOEV__HIDDEN void goev__pool_init(struct goev__pool *pl, size_t budget);
GOEV__HIDDEN void goev__pool_fini(struct goev__pool *pl);
/* Block of at least n bytes; *cap gets its real size.  NULL on ENOMEM. */
GOEV__HIDDEN void *goev__pool_get(struct goev__pool *pl, size_t n, size_t *cap);
GOEV__HIDDEN void goev__pool_put(struct goev__pool *pl, void *b, size_t cap);

/* ---- output queue -------------------------------------------------------- */

/* A connection's output: a FIFO of chunks.  Bytes [off, len) of the head
 * chunk are the next to go.  A backend may have the first `inflight` bytes
 * in the kernel (io_uring SEND): they are neither moved nor freed until
 * goev__outq_consume says so; appends only touch bytes past them. */
struct goev__chunk {
    struct goev__chunk *next;
    uint32_t off, len, cap;     /* cap == 0: a file chunk (see below) */
    char data[] __attribute__((aligned(8)));
};

/* A file chunk (goev_sendfile) holds no bytes but a range of a file that
 * the backend sends from the page cache; its fd is the queue's own (a dup)
 * and is closed when the range is consumed or the queue cleared. */
struct goev__fileref {
    int fd;
    uint64_t off;       /* next byte of the file to send */
    uint64_t left;      /* bytes of the range not yet consumed */
};

static inline struct goev__fileref *goev__chunk_file(struct goev__chunk *ch)
{
    return ch->cap ? NULL : (struct goev__fileref *)(void *)ch->data;
}



struct goev__outq {
    struct goev__chunk *head, *tail;
    size_t bytes;       /* queued, not yet consumed */
    size_t inflight;    /* bytes handed to the kernel, not yet completed */
};

/* The file range at the head of q, or NULL if memory bytes (or nothing)
 * come first. */
static inline struct goev__fileref *goev__outq_head_file(const struct goev__outq *q)
{
    return q->head ? goev__chunk_file(q->head) : NULL;
}

GOEV__HIDDEN int goev__outq_append(struct goev__pool *pl, struct goev__outq *q,
                                   const void *data, size_t len);
/* Queue len bytes of file fd from off; the queue owns fd from now on (also
 * on failure, when it is closed).  0 or -ENOMEM. */
GOEV__HIDDEN int goev__outq_append_file(struct goev__pool *pl, struct goev__outq *q, int fd,
                                        uint64_t off, uint64_t len);
/* Fill up to max iovecs with queued bytes, starting `skip` bytes in (skip =
 * q->inflight for io_uring), up to the first file chunk.  Returns the
 * count; *bytes gets their sum. */
GOEV__HIDDEN int goev__outq_iov(const struct goev__outq *q, size_t skip,
                                struct iovec *iov, int max, size_t *bytes);
/* Drop n bytes from the front, freeing emptied chunks (and closing the
 * files of consumed file chunks). */
GOEV__HIDDEN void goev__outq_consume(struct goev__pool *pl, struct goev__outq *q, size_t n);
GOEV__HIDDEN void goev__outq_clear(struct goev__pool *pl, struct goev__outq *q);

/* ---- timers -------------------------------------------------------------- */

/* 4-ary min-heap of timers ordered by (when_, seq_); each timer knows its
 * index, so removal is O(log n).  Every push takes the next seq, so timers
 * with one deadline fire in the order they were started.  Each slot holds
 * the deadline beside the pointer, so that sifts compare without touching
 * the timers (seq_ is read only on equal deadlines); a node's four children
 * share one 64-byte line (timer_heap.c). */
struct goev__heap_ent {
    uint64_t when;      /* == t->when_ */
    goev_timer *t;
};
struct goev__heap {
    struct goev__heap_ent *a;
    uint32_t n, cap;
    uint64_t seq;
    void *mem;          /* the allocation a lives in */
};

/* Deadlines saturate: a delay or period too large for the clock means
 * "never" (UINT64_MAX), not a deadline in the past. */
static inline uint64_t goev__deadline(uint64_t now, uint64_t delay)
{
    return delay > UINT64_MAX - now ? UINT64_MAX : now + delay;
}

GOEV__HIDDEN int goev__heap_init(struct goev__heap *hp, uint32_t cap);
GOEV__HIDDEN void goev__heap_fini(struct goev__heap *hp);
GOEV__HIDDEN int goev__heap_push(struct goev__heap *hp, goev_timer *t);
GOEV__HIDDEN void goev__heap_remove(struct goev__heap *hp, goev_timer *t);
/* Remove and return the earliest timer; the heap must not be empty. */
GOEV__HIDDEN goev_timer *goev__heap_pop(struct goev__heap *hp);
/* Earliest timer, or NULL. */
static inline goev_timer *goev__heap_top(const struct goev__heap *hp)
{
    return hp->n ? hp->a[0].t : NULL;
}
/* Earliest deadline; the heap must not be empty. */
static inline uint64_t goev__heap_top_when(const struct goev__heap *hp)
{
    return hp->a[0].when;
}

/* ---- connections --------------------------------------------------------- */

enum goev__kind { GOEV__K_NONE, GOEV__K_STREAM, GOEV__K_WATCH };

/* conn->flags */
enum {
    GOEV__C_OPEN        = 1u << 0,  /* on_open done, data flows */
    GOEV__C_CONNECTING  = 1u << 1,  /* goev_connect in progress */
    GOEV__C_PAUSED      = 1u << 2,  /* application paused reading */
    GOEV__C_EOF         = 1u << 3,  /* peer closed its side */
    GOEV__C_SHUT_WANT   = 1u << 4,  /* shut write side once drained */
    GOEV__C_SHUT_DONE   = 1u << 5,
    GOEV__C_CLOSE_WANT  = 1u << 6,  /* goev_close: close once drained */
    GOEV__C_CLOSING     = 1u << 7,  /* backend is tearing down */
    GOEV__C_DIRTY       = 1u << 8,  /* on the poller's flush list */
    GOEV__C_BLOCKED     = 1u << 9,  /* a flush did not take all: on_drained due */
    GOEV__C_LATER       = 1u << 10, /* on the later list (tail re-present, close) */
    GOEV__C_IN_CB       = 1u << 11, /* inside on_read (re-entrancy guard) */
    GOEV__C_KEEP_FD     = 1u << 12, /* watch: do not close the fd */
    GOEV__C_DEAD        = 1u << 13, /* on_close called; slot free */
    GOEV__C_RELEASED    = 1u << 14, /* backend done: on_close due */
    GOEV__C_SIGNAL      = 1u << 15, /* watch of a signalfd: on_signal */
    GOEV__C_THROTTLED   = 1u << 16, /* output past the high-water mark: not reading */
    GOEV__C_DIRECT      = 1u << 17, /* fd is an index in the poller's io_uring file
                                     * table (a direct descriptor), not an fd */
    GOEV__C_RESOLVING   = 1u << 18, /* connect by name: resolve.c holds its state */
    GOEV__C_TLS         = 1u << 19, /* a TLS layer (tls.c): c->cx is its struct goev__tls */
    GOEV__C_DRAIN       = 1u << 20, /* closing gracefully (CLOSE_WANT) but still reading:
                                     * TLS records are fed to OpenSSL and their plaintext
                                     * dropped, so no unread byte makes the close a reset */
};
/* Reading is off: paused by the application, or throttled by the library. */
#define GOEV__C_NOREAD (GOEV__C_PAUSED | GOEV__C_THROTTLED)

/* Should the backend go on reading c (re-arm a recv that ended)?  Not after
 * EOF or once closing; while draining (GOEV__C_DRAIN) yes; otherwise when
 * reading is not off and no graceful close waits. */
static inline bool goev__reading_wanted(uint32_t flags)
{
    if (flags & (GOEV__C_EOF | GOEV__C_CLOSING))
        return false;
    return (flags & GOEV__C_DRAIN) || !(flags & (GOEV__C_NOREAD | GOEV__C_CLOSE_WANT));
}

/* What only a connecting connection needs: the connect timeout, a timer in
 * the heap with a private handler (ih.user = the connection).  Taken from
 * the poller's pool by goev_connect when it has a timeout, given back when
 * the connect ends, so that it is not paid by every idle slot. */
struct goev__connecting {
    goev_timer timer;
    goev_handler ih;
};
#define GOEV__CONNECTING_BLOCK 128      /* its pool block (a class size) */
_Static_assert(sizeof(struct goev__connecting) <= GOEV__CONNECTING_BLOCK, "connect state fits");

/* Every byte here is paid by every connection, idle ones included (the
 * issue-8 budget: 256 B per idle connection on epoll, 384 B on io_uring,
 * library and application together); tests/test_mem guards the size.
 * State that only some connections need at some times lives elsewhere:
 * the connect timeout in struct goev__connecting, input in a heap block
 * only while a tail is kept, output in pool chunks only while queued. */
struct goev__conn {
    /* First, and never cleared: goev_async_write reads it from other
     * threads (atomically), while slot reuse resets everything after it. */
    uint32_t gen;
    uint32_t slot;
    goev_handler *h;
    goev_poller *p;
    int fd;
    uint32_t flags;
    uint8_t kind;
    uint8_t watch_events;           /* watch: GOEV_READ|GOEV_WRITE wanted */
    int close_reason;
    /* unconsumed input tail (a heap block of in_cap bytes, or NULL) */
    char *in;
    uint32_t in_len, in_cap;
    struct goev__outq out;
    struct goev__conn *dirty_next;  /* flush list link */
    struct goev__conn *later_next;  /* later list link (tail, close) */
    uint32_t out_high, out_low;     /* output watermarks (UINT32_MAX: none) */
    struct goev__connecting *cx;    /* connect timeout, while connecting; with
                                     * GOEV__C_TLS, always: the TLS state's own
                                     * (connect, then handshake timeout) */
    /* The backend's own state (backend->conn_priv bytes) follows in the
     * same slot: goev__conn_priv. */
};
_Static_assert(sizeof(struct goev__conn) <= 120, "struct goev__conn: keep idle slots small");

/* Connection id (goev_conn_id): poller | slot | generation, from the top
 * bit down.  The field widths set the limits: GOEV__MAX_POLLERS pollers per
 * reactor, GOEV__MAX_SLOTS connections per poller.  A generation is never 0,
 * so neither is an id. */
#define GOEV__ID_POLLER_BITS 8
#define GOEV__ID_SLOT_BITS 24
#define GOEV__ID_GEN_BITS 32
_Static_assert(GOEV__ID_POLLER_BITS + GOEV__ID_SLOT_BITS + GOEV__ID_GEN_BITS == 64,
               "goev_conn_id is 64 bits");
#define GOEV__MAX_POLLERS ((1 << GOEV__ID_POLLER_BITS) - 1)
#define GOEV__MAX_SLOTS (1u << GOEV__ID_SLOT_BITS)

/* Connections live in per-poller chunks of slots so their addresses stay put;
 * the slot table is also the connection pool (freed slots are reused). */
#define GOEV__SLOT_CHUNK 1024

/* A slot's generation.  Only its poller writes it (slot_free), but
 * goev_async_write reads it from any thread: every access is atomic.
 * Relaxed is enough - a reader only compares it with an id's and the poller
 * checks again - except that a new chunk's initial generations must be
 * visible with the chunk pointer, which p->chunks[] publishes with
 * release/acquire. */
static inline uint32_t goev__gen(const struct goev__conn *c)
{
    return __atomic_load_n(&c->gen, __ATOMIC_RELAXED);
}

static inline goev_conn_id goev__mkid(uint32_t poller, uint32_t slot, uint32_t gen)
{
    return ((uint64_t)poller << (GOEV__ID_SLOT_BITS + GOEV__ID_GEN_BITS)) |
           ((uint64_t)slot << GOEV__ID_GEN_BITS) | gen;
}
static inline uint32_t goev__id_poller(goev_conn_id id)
{
    return (uint32_t)(id >> (GOEV__ID_SLOT_BITS + GOEV__ID_GEN_BITS));
}
static inline uint32_t goev__id_slot(goev_conn_id id)
{
    return (uint32_t)(id >> GOEV__ID_GEN_BITS) & (GOEV__MAX_SLOTS - 1);
}
static inline uint32_t goev__id_gen(goev_conn_id id)
{
    return (uint32_t)id;
}

/* A slot is the core's struct goev__conn followed by the backend's
 * conn_priv bytes (8-aligned); p->slot_stride is their sum. */
#define GOEV__CONN_SIZE ((sizeof(struct goev__conn) + 7) & ~(size_t)7)
static inline size_t goev__slot_stride(size_t conn_priv)
{
    return GOEV__CONN_SIZE + ((conn_priv + 7) & ~(size_t)7);
}
static inline void *goev__conn_priv(struct goev__conn *c)
{
    return (char *)c + GOEV__CONN_SIZE;
}
/* Slot i of a chunk of p's slot table. */
static inline struct goev__conn *goev__chunk_slot(const goev_poller *p, struct goev__conn *chunk,
                                                  uint32_t i);

/* ---- listeners ----------------------------------------------------------- */

struct goev__listener {
    struct goev__listener *next;    /* the poller's listeners */
    goev_acceptor *a;
    goev_poller *p;         /* accepting poller */
    int fd;
    int paused;             /* in EMFILE back-off */
    goev_handler bh;        /* handler owning the back-off timer */
    goev_timer backoff;
    uint64_t retry_at;      /* back-off without a timer (no memory): resume then */
    union {
        struct { int registered; } ep;
        struct {
            uint8_t armed, cancel_sent, want, deferred;
            uint8_t direct;     /* the armed accept fills the file table */
            uint8_t regular;    /* the table is (nearly) full: accept fds */
        } ur;
    } b;
};

/* ---- cross-thread messages --------------------------------------------- */

enum goev__msg_kind { GOEV__M_POST, GOEV__M_WRITE, GOEV__M_CLOSE, GOEV__M_HANDOFF };

struct goev__msg {
    struct goev__msg *next;
    uint8_t kind;
    union {
        struct { goev_post_fn fn; void *arg; } post;
        struct { goev_conn_id id; size_t len; } write;  /* data follows; also CLOSE */
        struct { int fd; goev_acceptor *a; } handoff;
    } u;
    char data[];
};

/* Multi-producer queue: a mutex-protected list swapped out whole by the
 * consumer.  The producer that makes it non-empty wakes the poller. */
struct goev__mq {
    pthread_mutex_t mu;
    struct goev__msg *head, **tailp;
    int closed;     /* the poller's stop is over: refuse messages */
};

/* ---- backend seam -------------------------------------------------------- */

struct goev__backend {
    const char *name;
    /* Bytes of backend state kept with every connection, right after the
     * core's struct goev__conn (goev__conn_priv); zeroed when a slot is
     * taken.  Keep it small: it is paid by every idle connection. */
    size_t conn_priv;
    /* Hooks marked "optional" may be NULL; the core checks.
     *
     * Optional.  Can this backend run here?  0, or a negative errno with a
     * reason written to why.  Called once per reactor, on a fresh thread. */
    int (*probe)(char *why, size_t whylen);
    /* Set up / tear down one poller's instance.  init runs on the creating
     * thread; thread_start (optional) on the poller's own thread before its
     * loop. */
    int (*poller_init)(goev_poller *p);
    int (*thread_start)(goev_poller *p);
    /* Optional.  On the poller thread, at stop, after every connection was
     * released:
     * end the backend's own ops (wake-up read, accepts) and wait for their
     * completions, so that no kernel op outlives the poller's memory. */
    void (*thread_stop)(goev_poller *p);
    void (*poller_fini)(goev_poller *p);
    /* Stream connection: start reading (also after goev_resume_read), stop
     * reading (goev_pause_read). */
    int (*conn_start)(struct goev__conn *c);
    void (*conn_pause)(struct goev__conn *c);
    /* Push c's output queue to the kernel (end of pass, c is dirty). */
    void (*flush)(struct goev__conn *c);
    /* Begin tearing c down: stop every op; when none is left, call
     * goev__on_released(c), which closes the fd (unless KEEP_FD). */
    void (*conn_close)(struct goev__conn *c);
    /* Raw watch: set the wanted events (0 = none). */
    int (*watch)(struct goev__conn *c, unsigned events);
    /* Listener: start / stop accepting. */
    int (*listen_start)(struct goev__listener *l);
    void (*listen_stop)(struct goev__listener *l);
    /* Start a non-blocking connect of c->fd (already a non-blocking socket)
     * to sa; the outcome comes as goev__on_connected. */
    int (*connect)(struct goev__conn *c, const struct sockaddr *sa, socklen_t len);
    /* Optional (io_uring).  c is GOEV__C_DIRECT: make it a connection on a
     * regular fd (c->fd becomes one, the flag goes).  0 or a negative errno. */
    int (*fd_install)(struct goev__conn *c);
    /* Wait for events up to timeout_ms (-1 = forever, 0 = poll) and
     * dispatch them through goev__on_*.  Submits queued work in the same
     * call where the backend allows it.  Returns 0 or a negative errno. */
    int (*wait)(goev_poller *p, int timeout_ms);
};

GOEV__HIDDEN extern const struct goev__backend goev__epoll_backend;
#ifdef GOEV_HAVE_URING
GOEV__HIDDEN extern const struct goev__backend goev__uring_backend;
#endif

/* ---- poller / reactor ---------------------------------------------------- */

struct goev_poller {
    goev_reactor *r;
    const struct goev__backend *be;
    int idx;
    pthread_t thread;
    uint64_t now_ms;
    struct goev__heap timers;
    struct goev__pool pool;
    /* slot table: chunks of GOEV__SLOT_CHUNK slots of slot_stride bytes */
    struct goev__conn **chunks;
    size_t slot_stride;
    uint32_t nchunks, nslots;
    uint32_t *free_slots;
    uint32_t nfree;
    /* end-of-pass lists */
    struct goev__conn *dirty;
    struct goev__conn *later;   /* work left for the pass's end: goev__run_later */
    /* cross-thread */
    struct goev__mq mq;
    int wake_fd;                /* eventfd */
    int sleeping;               /* atomic: 1 while blocked in wait */
    /* backend instance */
    void *bd;
    void *local[GOEV_LOCAL_SLOTS];
    uint32_t out_high, out_low;     /* the reactor's watermarks, for new connections */
    struct goev__listener *listeners;
    uint64_t retry_at;          /* earliest listener retry_at, UINT64_MAX if none */
    uint32_t nlive;             /* slots in use */
    int closing;                /* poller_shutdown has begun */
    int failed;                 /* the backend failed: the loop ended early */
    struct goev__resolver *resolver;    /* resolve.c: made at the first name connect */
    char *tls_buf;              /* tls.c: plaintext scratch, made at the first TLS read */
    struct goev_stats stats;
};

struct goev_reactor {
    const struct goev__backend *be;
    goev_poller *pollers;
    int npollers;
    int stop;                   /* atomic */
    int error;                  /* atomic: first poller failure (negative errno) */
    int state;                  /* 0 new, 1 running, 2 done */
    struct goev_reactor_opts opts;
    char reason[256];
    pthread_t *threads;
    int started_async;
};

static inline struct goev__conn *goev__chunk_slot(const goev_poller *p, struct goev__conn *chunk,
                                                  uint32_t i)
{
    return (struct goev__conn *)(void *)((char *)chunk + (size_t)i * p->slot_stride);
}

/* The live connection in slot of p, or NULL (out of range or free).  Inline:
 * backends call it once per completion or event. */
static inline struct goev__conn *goev__slot_conn(goev_poller *p, uint32_t slot)
{
    if (GOEV__UNLIKELY(slot >= p->nslots))
        return NULL;
    struct goev__conn *c = goev__chunk_slot(p, p->chunks[slot / GOEV__SLOT_CHUNK], slot % GOEV__SLOT_CHUNK);
    return c->h ? c : NULL;
}

/* ---- core entry points for backends ------------------------------------- */

/* Bytes read for c (a stream): delivered to on_read with the kept tail. */
GOEV__HIDDEN void goev__on_data(struct goev__conn *c, const char *data, size_t len);
/* EOF from the peer. */
GOEV__HIDDEN void goev__on_eof(struct goev__conn *c);
/* A fatal error on c (negative errno): closes it. */
GOEV__HIDDEN void goev__on_error(struct goev__conn *c, int err);
/* n bytes of c's output were taken by the kernel (consumes them from the
 * queue; fires on_drained / shutdown / deferred close when it empties).
 * `blocked` is true if the kernel did not take all that was offered. */
GOEV__HIDDEN void goev__on_sent(struct goev__conn *c, size_t n, bool blocked);
/* Connect finished: err 0 or a negative errno. */
GOEV__HIDDEN void goev__on_connected(struct goev__conn *c, int err);
/* Raw watch ready. */
GOEV__HIDDEN void goev__on_ready(struct goev__conn *c, unsigned events);
/* The backend is done with c (no op in flight): the core closes the fd
 * (unless KEEP_FD) and calls on_close at the end of the pass. */
GOEV__HIDDEN void goev__on_released(struct goev__conn *c);
/* Listener l accepted fd (>= 0), or failed with err (< 0). */
GOEV__HIDDEN void goev__on_accept(struct goev__listener *l, int fd);
GOEV__HIDDEN void goev__on_accept_error(struct goev__listener *l, int err);
/* Listener l accepted a direct descriptor (index idx of its poller's io_uring
 * file table).  0 if a connection took it; otherwise a negative errno and
 * idx is still the caller's to close. */
GOEV__HIDDEN int goev__on_accept_direct(struct goev__listener *l, int idx);
/* Are l's connections always opened on l's own poller (so that a direct
 * descriptor, which only that poller's ring knows, can be used)? */
GOEV__HIDDEN bool goev__listener_local(const struct goev__listener *l);
/* A regular fd for c, installing one if c is a direct descriptor
 * (fd_install); the fd or a negative errno.  Poller thread. */
GOEV__HIDDEN int goev__conn_fd(struct goev__conn *c);
/* (A wake-up needs no entry point: the core writes p->wake_fd, the backend
 * watches it and resets it, the wait ends, and the loop drains the
 * cross-thread queue on every pass.) */

/* Hand an accepted fd to poller p's thread (acceptor.c decides when). */
GOEV__HIDDEN void goev__post_handoff(goev_poller *p, goev_acceptor *a, int fd);

/* Core helpers shared by the files of lib/ */
GOEV__HIDDEN void goev__conn_close(struct goev__conn *c, int reason);
/* tls: serve TLS with this server context (NULL: plain). */
GOEV__HIDDEN int goev__adopt(goev_poller *p, goev_handler *h, int fd, bool set_nonblock,
                             uint32_t cflags, goev_tls_ctx *tls);
GOEV__HIDDEN void goev__handoff(goev_poller *p, goev_acceptor *a, int fd);
GOEV__HIDDEN void goev__run_later(goev_poller *p);
GOEV__HIDDEN void goev__flush_dirty(goev_poller *p);
GOEV__HIDDEN void goev__close_all(goev_poller *p, int reason);
GOEV__HIDDEN void goev__abandon_all(goev_poller *p);
GOEV__HIDDEN void goev__slots_fini(goev_poller *p);
GOEV__HIDDEN void goev__run_timers(goev_poller *p);
GOEV__HIDDEN int goev__timer_arm(goev_poller *p, goev_handler *ih, goev_timer *t, uint64_t delay_ms);
/* Before the reactor runs, the creating thread sets timers up: bring p's
 * cached clock up to date unless p's own thread is calling (its clock is
 * the pass's). */
GOEV__HIDDEN void goev__clock_refresh(goev_poller *p);
GOEV__HIDDEN void goev__listener_shutdown(struct goev__listener *l);
GOEV__HIDDEN void goev__listeners_retry(goev_poller *p);

/* Watch fd for h (goev_watch, signal watches): flags are GOEV__C_* added
 * to the connection's (KEEP_FD, SIGNAL). */
GOEV__HIDDEN int goev__watch(goev_poller *p, goev_handler *h, int fd, unsigned events, uint32_t flags);
/* A signal watch's fd is readable: read and dispatch (signal.c). */
GOEV__HIDDEN void goev__signals_ready(struct goev__conn *c);

/* True once p's reactor is stopping (or, never run, being freed): what
 * would open connections (a pool's refill) must not. */
GOEV__HIDDEN bool goev__stopping(const goev_poller *p);

/* Look a slot up (NULL if free). */
/* Mark c for flushing at the end of the pass. */
static inline void goev__mark_dirty(struct goev__conn *c)
{
    if (!(c->flags & GOEV__C_DIRTY)) {
        c->flags |= GOEV__C_DIRTY;
        c->dirty_next = c->p->dirty;
        c->p->dirty = c;
    }
}

/* Socket options (sock.c): 0 or a negative errno. */
GOEV__HIDDEN int goev__sock_int(int fd, int level, int name, int value);
GOEV__HIDDEN int goev__sock_keepalive(int fd, int idle_s, int interval_s, int count);

/* Address parsing shared by acceptor and connector. */
GOEV__HIDDEN int goev__parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* ---- name resolution (resolve.c) ----------------------------------------
 * A connect by name is an ordinary connecting stream slot flagged
 * GOEV__C_RESOLVING, with no fd while its name is looked up; resolve.c keeps
 * the rest (lookup, addresses, options) on the side, so that numeric
 * connects and idle connections pay nothing.  Each address is one attempt
 * through the backend's connect; a failed attempt is released by the
 * backend (conn_close, goev__on_released) and the slot, zeroed for the
 * backend as a fresh one, goes on with the next address at the end of the
 * pass (the later list). */

/* 0 if s is "host:port" with a well-formed name and the library can
 * resolve it, -EINVAL if it is no name, GOEV_ENORESOLV without c-ares. */
GOEV__HIDDEN int goev__name_check(const char *s);
/* Look up the name of c (attached, CONNECTING, no fd) and connect to it:
 * 0 (the outcome comes as goev__on_connected) or a negative error (c is
 * left as it was given: the caller detaches it). */
GOEV__HIDDEN int goev__resolve_start(struct goev__conn *c, const char *addr,
                                     const struct goev_connect_opts *o);
/* Hooks of conn.c, for slots flagged GOEV__C_RESOLVING: */
/* The attempt ended with err: true if the next address is being tried
 * (the caller does nothing more). */
GOEV__HIDDEN bool goev__resolve_connected(struct goev__conn *c, int err);
/* c closes: drop the lookup; true if the close is taken care of. */
GOEV__HIDDEN bool goev__resolve_close(struct goev__conn *c, int reason);
/* The backend let go of a failed attempt: true if the slot goes on. */
GOEV__HIDDEN bool goev__resolve_released(struct goev__conn *c);
/* c was on the later list: its next step (an attempt, or the failure). */
GOEV__HIDDEN void goev__resolve_later(struct goev__conn *c);
/* Free p's resolver (poller_fini: the poller's thread is done). */
GOEV__HIDDEN void goev__resolver_free(goev_poller *p);

/* conn.c for resolve.c: put c on the later list; open a socket for sa with
 * the options o and start connecting c on it (0, or an error with c->fd
 * back to -1); finish a connect (as the backend does). */
GOEV__HIDDEN void goev__push_later(struct goev__conn *c);
GOEV__HIDDEN int goev__connect_attempt(struct goev__conn *c, const struct sockaddr *sa,
                                       socklen_t len, const struct goev_connect_opts *o);

/* ---- TLS (tls.c) --------------------------------------------------------
 * A connection flagged GOEV__C_TLS has a struct goev__tls whose first member
 * is its struct goev__connecting (c->cx points at it for the connection's
 * whole life).  The backend's bytes are ciphertext: conn.c hands them to
 * tls.c, which hands plaintext back through goev__deliver; plaintext
 * written is queued in the TLS state and encrypted into c->out when the
 * poller flushes. */
/* Give c (attached, not open yet) a TLS layer with ctx: server_name is the
 * client's SNI / name to verify (NULL: none; ip: verify this IP instead).
 * 0, -ENOMEM. */
GOEV__HIDDEN int goev__tls_attach(struct goev__conn *c, goev_tls_ctx *ctx, const char *server_name,
                                  const char *ip);
GOEV__HIDDEN void goev__tls_free(struct goev__conn *c);
/* c is open (TCP): start reading and the handshake; on_open comes after. */
GOEV__HIDDEN void goev__tls_begin(struct goev__conn *c);
/* Ciphertext from the backend. */
GOEV__HIDDEN void goev__tls_input(struct goev__conn *c, const char *data, size_t len);
/* EOF from the backend: true if tls.c closed c for it, false for the
 * ordinary EOF path. */
GOEV__HIDDEN bool goev__tls_eof(struct goev__conn *c);
/* Plaintext output: queued in the TLS layer. */
GOEV__HIDDEN int goev__tls_write(struct goev__conn *c, const void *data, size_t len);
GOEV__HIDDEN int goev__tls_sendfile(struct goev__conn *c, int fd, uint64_t off, uint64_t len);
/* At flush: encrypt what is queued into c->out (a file range a slice at a
 * time), then close_notify if a close or shutdown waits for it. */
GOEV__HIDDEN void goev__tls_flush(struct goev__conn *c);
/* Plaintext bytes not yet encrypted. */
GOEV__HIDDEN size_t goev__tls_pending(const struct goev__conn *c);
/* Something must still go out: plaintext, or close_notify (after a
 * finished handshake) if a close or shutdown waits (or, closing, would
 * wait) for it. */
GOEV__HIDDEN bool goev__tls_busy(const struct goev__conn *c, bool closing);
/* The handshake has finished. */
GOEV__HIDDEN bool goev__tls_open(const struct goev__conn *c);
/* c begins a graceful close: true if it should go on reading meanwhile
 * (handshake done, not failed, the peer's close_notify not in yet), so
 * that what the peer still sends is taken and dropped (GOEV__C_DRAIN). */
GOEV__HIDDEN bool goev__tls_drains(const struct goev__conn *c);
/* c closes gracefully and its close_notify is out: true if it is a client
 * that should half-close and wait (bounded, a timer tls.c arms now) for
 * the server's EOF before closing its fd; false: close now.  True again
 * while it waits. */
GOEV__HIDDEN bool goev__tls_linger(struct goev__conn *c);
/* c is waiting as goev__tls_linger said. */
GOEV__HIDDEN bool goev__tls_lingering(const struct goev__conn *c);
GOEV__HIDDEN void goev__tls_poller_fini(goev_poller *p);
/* Take a reference to ctx (acceptors) / drop one. */
GOEV__HIDDEN goev_tls_ctx *goev__tls_ctx_ref(goev_tls_ctx *ctx);
GOEV__HIDDEN int goev__tls_ctx_server(const goev_tls_ctx *ctx);

/* conn.c for tls.c: plaintext into on_read (with the kept tail); the EOF
 * path of a plain connection; on_open and what follows it. */
GOEV__HIDDEN void goev__deliver(struct goev__conn *c, const char *data, size_t len);
GOEV__HIDDEN void goev__eof_plain(struct goev__conn *c);
GOEV__HIDDEN void goev__app_open(struct goev__conn *c);
/* goev_close with a reason: what is queued goes out first. */
GOEV__HIDDEN void goev__close_gracefully(struct goev__conn *c, int reason);

/* ---- diagnostics (debug.c) ---------------------------------------------- */

/* Is GOEV_DEBUG set (and not "0")?  Looked up once. */
GOEV__HIDDEN bool goev__debug_on(void);
/* One line "goev: ..." on stderr, only when GOEV_DEBUG is set: the library
 * writes nothing otherwise. */
GOEV__HIDDEN void goev__debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Internal invariants (never network input or a peer's behaviour): checked
 * unless NDEBUG; a violation is a bug in goev and aborts with a message. */
GOEV__HIDDEN void goev__assert_fail(const char *what, const char *file, int line, const char *func)
    __attribute__((noreturn, cold));
#ifdef NDEBUG
#define goev__assert(x) ((void)0)
#else
#define goev__assert(x) \
    (GOEV__LIKELY(x) ? (void)0 : goev__assert_fail(#x, __FILE__, __LINE__, __func__))
#endif

/* Time */
GOEV__HIDDEN uint64_t goev__now_ms(void);

#endif
