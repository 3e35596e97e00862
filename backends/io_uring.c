/* io_uring.c - the completion backend's data path (liburing 2.3); ring
 * setup and the probe are in io_uring_probe.c.
 *
 *   ring:    SINGLE_ISSUER | DEFER_TASKRUN (then COOP_TASKRUN | TASKRUN_FLAG,
 *            then nothing), created disabled on the reactor's thread and
 *            enabled on the poller's, because a single-issuer ring belongs
 *            to the task that enables it; work set up before that is
 *            deferred (state only) and queued when the poller starts
 *   input:   one multishot recv per connection into a provided-buffer ring;
 *            a buffer goes back to the ring as soon as on_read returns -
 *            or, where the kernel consumes buffers incrementally (6.12),
 *            once the kernel has filled it: small receives of many
 *            connections then share one buffer instead of taking one each
 *   output:  at most one SEND/SENDMSG in flight per connection, carrying
 *            everything queued when the pass ended
 *   accept:  multishot accept; watches: one-shot POLL_ADD re-armed after
 *            each callback, which is what level-triggered means
 *   loop:    one io_uring_enter per pass submits and waits; CQEs are drained
 *            in one batch and the buffers returned are published once
 *
 * user_data = op | slot | generation for connections (see ud_make), so
 * that a CQE for a connection that is gone (its slot reused) is recognised
 * and dropped.  Listeners are not slots: their pointer (>> 3) is the key. */
#include "io_uring_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
    OP_IGNORE = 0,  /* cancels and poll removes: only counted */
    OP_RECV,
    OP_SEND,
    OP_POLL,
    OP_CONNECT,
    OP_ACCEPT,
    OP_WAKE,
    OP_CANCEL_RECV, /* a pause's cancel: retried if the recv was busy */
    OP_WRITABLE,    /* POLLOUT wait of a file send the socket had no room for */
    OP_INSTALL,     /* FIXED_FD_INSTALL whose CQE fd_install did not find */
};

/* Kernel 6.8 (liburing 2.3 predates it): a regular fd for a direct one. */
#ifndef IORING_OP_FIXED_FD_INSTALL
#define IORING_OP_FIXED_FD_INSTALL 54
#endif

#define BGID GOEV__UR_BGID

enum {
    SQ_ENTRIES = 4096,      /* a full SQ is submitted to make room (get_sqe) */
    CQ_MIN = 16384,
    MAX_BUFS = 32768,       /* kernel limit of a buffer ring */
};

#define FILE_SLICE ((size_t)1 << 30)   /* most one sendfile is asked for */

/* user_data = op | key, encoded and decoded only here.  A connection's key
 * is the slot and generation part of its conn id (goev__mkid), a
 * listener's its address >> 3 (8-aligned; user-space addresses fit). */
#define UD_OP_BITS 8
#define UD_KEY_BITS (GOEV__ID_SLOT_BITS + GOEV__ID_GEN_BITS)
#define UD_KEY_MASK ((UINT64_C(1) << UD_KEY_BITS) - 1)
_Static_assert(UD_OP_BITS + UD_KEY_BITS <= 64, "user_data holds op and key");

static inline uint64_t ud_make(unsigned op, uint64_t key)
{
    return ((uint64_t)op << UD_KEY_BITS) | (key & UD_KEY_MASK);
}
static inline uint64_t ud_conn(unsigned op, const struct goev__conn *c)
{
    return ud_make(op, goev__mkid(0, c->slot, goev__gen(c)));
}
static inline uint64_t ud_listener(const struct goev__listener *l)
{
    return ud_make(OP_ACCEPT, (uint64_t)(uintptr_t)l >> 3);
}
static inline unsigned ud_op(uint64_t ud) { return (unsigned)(ud >> UD_KEY_BITS); }
static inline uint64_t ud_key(uint64_t ud) { return ud & UD_KEY_MASK; }
static inline uint32_t ud_slot(uint64_t ud) { return goev__id_slot(ud_key(ud)); }
static inline uint32_t ud_gen(uint64_t ud) { return goev__id_gen(ud_key(ud)); }
static inline struct goev__listener *ud_to_listener(uint64_t ud)
{
    return (struct goev__listener *)(uintptr_t)(ud_key(ud) << 3);
}
#define UD_WAKE ud_make(OP_WAKE, 0)

struct ur {
    struct io_uring ring;
    int ring_fd;            /* ours (goev__ur_ring_create); queue_exit closes it */
    int fd_registered;      /* io_uring_register_ring_fd on the poller thread */
    struct io_uring_buf_ring *br;
    char *bufs;
    size_t br_bytes, bufs_bytes;
    unsigned nbufs, buf_size;
    unsigned nret;          /* buffers given back, not yet published */
    /* Incremental consumption (IOU_PBUF_RING_INC): boff[bid] is where the
     * next bytes the kernel puts in buffer bid begin; NULL without it. */
    uint32_t *boff;
    unsigned ops_out;       /* SQEs whose final CQE has not come back */
    int started;            /* ring enabled by this poller's thread: may submit */
    int stopping;           /* thread_stop: nothing is re-armed */
    int wake_armed;
    uint64_t wake_val;
    size_t opmem_cap;       /* pool block size of a union ur_opmem */
    /* Direct descriptors: accepted sockets live in the ring's sparse file
     * table (kernel-allocated slots), not in the process's fd table. */
    unsigned files;         /* table size; 0: no direct descriptors */
    unsigned files_used;    /* slots held by connections */
    unsigned regular_listeners;     /* listeners accepting fds: table nearly full */
};

/* The table is "nearly full" at 7/8: a listener then accepts regular fds,
 * because a direct accept that finds the table full has already taken the
 * connection off the backlog and the kernel drops it (ENFILE); it goes
 * back to direct below 3/4. */
static inline bool files_high(const struct ur *u) { return u->files_used >= u->files - u->files / 8; }
static inline bool files_low(const struct ur *u) { return u->files_used < u->files - u->files / 4; }

/* A connection's part (goev__conn_priv): what is in flight, and a pointer
 * to memory that an op in flight reads, taken from the poller's pool for
 * that op's time only (the CONNECT's target, or a SENDMSG's header and
 * iovecs; no send is in flight before the connect is done). */
struct ur_conn {
    uint16_t ops_out;               /* ops whose final CQE has not come back */
    uint8_t poll_want, poll_mask;   /* watch: GOEV_READ|GOEV_WRITE */
    uint16_t recv_armed : 1, send_armed : 1, poll_armed : 1, connect_armed : 1;
    uint16_t cancel_sent : 1, poll_cancel : 1, close_sent : 1;
    uint16_t deferred : 1;          /* armed before the ring started: no SQE yet */
    uint16_t handed_back : 1;       /* goev__on_released called */
    union ur_opmem *op_mem;
};

enum { SEND_IOV = 8 };
union ur_opmem {
    struct {
        struct sockaddr_storage addr;
        socklen_t len;
    } connect;
    struct {
        struct msghdr msg;
        struct iovec iov[SEND_IOV];
    } send;
};

static inline struct ur *UR(goev_poller *p) { return p->bd; }
static inline struct ur_conn *UC(struct goev__conn *c) { return goev__conn_priv(c); }

/* An SQE on c's socket: a direct descriptor is an index, said by a flag. */
static inline void sqe_file(struct io_uring_sqe *s, const struct goev__conn *c)
{
    if (c->flags & GOEV__C_DIRECT)
        s->flags |= IOSQE_FIXED_FILE;
}

/* One of c's ops is over (its final CQE, or undone before submission). */
static inline void op_done(struct goev__conn *c)
{
    goev__assert(UC(c)->ops_out > 0);
    UC(c)->ops_out--;
}

static union ur_opmem *opmem_get(struct goev__conn *c)
{
    size_t cap;
    union ur_opmem *m = goev__pool_get(&c->p->pool, sizeof *m, &cap);
    UR(c->p)->opmem_cap = cap;      /* the same for every block */
    UC(c)->op_mem = m;
    return m;
}

static void opmem_put(struct goev__conn *c)
{
    struct ur_conn *uc = UC(c);
    if (uc->op_mem) {
        goev__pool_put(&c->p->pool, uc->op_mem, UR(c->p)->opmem_cap);
        uc->op_mem = NULL;
    }
}

/* ---- submission helpers ---------------------------------------------------- */

static inline void publish_bufs(struct ur *u)
{
    if (u->nret) {
        io_uring_buf_ring_advance(u->br, (int)u->nret);
        u->nret = 0;
    }
}

static inline void give_back(struct ur *u, unsigned bid)
{
    io_uring_buf_ring_add(u->br, u->bufs + (size_t)bid * u->buf_size, u->buf_size,
                          (unsigned short)bid, io_uring_buf_ring_mask(u->nbufs), (int)u->nret++);
}

/* An SQE, pushing the SQ out if it is full.  Only for a started ring (the
 * poller thread enabled it and may submit): before that, ops are deferred
 * (see arm_recv).  Every SQE handed out must produce one final CQE: it is
 * counted. */
static struct io_uring_sqe *get_sqe(goev_poller *p, struct ur *u)
{
    struct io_uring_sqe *s = io_uring_get_sqe(&u->ring);
    if (GOEV__UNLIKELY(!s)) {
        goev__assert(u->started);   /* before that, arming defers */
        publish_bufs(u);
        io_uring_submit(&u->ring);
        GOEV__STAT_INC(p, sys_submit);
        s = io_uring_get_sqe(&u->ring);
        if (!s)
            return NULL;
    }
    u->ops_out++;
    return s;
}

static void cancel_ud(goev_poller *p, struct ur *u, uint64_t ud)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (s) {
        io_uring_prep_cancel64(s, ud, 0);
        io_uring_sqe_set_data64(s, 0);
    }
}

/* The SQEs of a connection's ops, from its state. */
static int sq_recv(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    io_uring_prep_recv_multishot(s, c->fd, NULL, 0, 0);
    sqe_file(s, c);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, ud_conn(OP_RECV, c));
    return 0;
}

static int sq_poll(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    unsigned want = UC(c)->poll_mask;
    io_uring_prep_poll_add(s, c->fd, ((want & GOEV_READ) ? POLLIN : 0) | ((want & GOEV_WRITE) ? POLLOUT : 0));
    io_uring_sqe_set_data64(s, ud_conn(OP_POLL, c));
    return 0;
}

static int sq_connect(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    union ur_opmem *m = UC(c)->op_mem;
    io_uring_prep_connect(s, c->fd, (struct sockaddr *)&m->connect.addr, m->connect.len);
    io_uring_sqe_set_data64(s, ud_conn(OP_CONNECT, c));
    return 0;
}

static int sq_accept(goev_poller *p, struct ur *u, struct goev__listener *l)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return -EBUSY;
    if (l->b.ur.regular && u->files && files_low(u)) {
        l->b.ur.regular = 0;
        u->regular_listeners--;
    } else if (!l->b.ur.regular && u->files && files_high(u)) {
        l->b.ur.regular = 1;
        u->regular_listeners++;
    }
    /* A direct descriptor is only known to this ring: the connection must
     * open on this poller. */
    l->b.ur.direct = u->files && !l->b.ur.regular && goev__listener_local(l);
    if (l->b.ur.direct)
        io_uring_prep_multishot_accept_direct(s, l->fd, NULL, NULL, SOCK_NONBLOCK); /* no CLOEXEC: no fd */
    else
        io_uring_prep_multishot_accept(s, l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, ud_listener(l));
    return 0;
}

/* Arming an op: its SQE now, or - before the ring is started, when nothing
 * can be submitted - only its state, marked deferred; thread_start queues
 * the SQEs of every deferred connection and listener (submitting as the SQ
 * fills), so any amount of work can be set up before the reactor runs.
 * Until then a deferred op is undone by clearing its state: nothing of it
 * is in the kernel. */
static int arm_recv(struct goev__conn *c)
{
    if (UR(c->p)->started) {
        int rc = sq_recv(c);
        if (rc < 0)
            return rc;
    } else {
        UC(c)->deferred = 1;
    }
    UC(c)->recv_armed = 1;
    UC(c)->ops_out++;
    return 0;
}

static int arm_poll(struct goev__conn *c)
{
    UC(c)->poll_mask = UC(c)->poll_want;
    if (UR(c->p)->started) {
        int rc = sq_poll(c);
        if (rc < 0)
            return rc;
    } else {
        UC(c)->deferred = 1;
    }
    UC(c)->poll_armed = 1;
    UC(c)->ops_out++;
    return 0;
}

static int arm_connect(struct goev__conn *c)
{
    if (UR(c->p)->started) {
        int rc = sq_connect(c);
        if (rc < 0)
            return rc;
    } else {
        UC(c)->deferred = 1;
    }
    UC(c)->connect_armed = 1;
    UC(c)->ops_out++;
    return 0;
}

static int arm_accept(goev_poller *p, struct ur *u, struct goev__listener *l)
{
    if (u->started) {
        int rc = sq_accept(p, u, l);
        if (rc < 0)
            return rc;
    } else {
        l->b.ur.deferred = 1;
    }
    l->b.ur.armed = 1;
    return 0;
}

static int arm_wake(goev_poller *p, struct ur *u)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return -EBUSY;
    io_uring_prep_read(s, p->wake_fd, &u->wake_val, sizeof u->wake_val, 0);
    io_uring_sqe_set_data64(s, UD_WAKE);
    u->wake_armed = 1;
    return 0;
}

/* Queue the SQEs of c's deferred ops (thread_start).  An op that cannot be
 * queued fails c. */
static void submit_deferred(struct goev__conn *c)
{
    struct ur_conn *uc = UC(c);
    uc->deferred = 0;
    int rc = 0;
    if (uc->connect_armed && (rc = sq_connect(c)) < 0) {
        uc->connect_armed = 0;
        op_done(c);
        opmem_put(c);
    }
    if (uc->recv_armed && (rc = sq_recv(c)) < 0) {
        uc->recv_armed = 0;
        op_done(c);
    }
    if (uc->poll_armed && (rc = sq_poll(c)) < 0) {
        uc->poll_armed = 0;
        op_done(c);
    }
    if (rc < 0)
        goev__on_error(c, rc);
}

/* Before the ring is started: forget c's deferred ops. */
static void drop_deferred(struct goev__conn *c)
{
    struct ur_conn *uc = UC(c);
    uc->deferred = 0;
    uc->recv_armed = uc->poll_armed = uc->connect_armed = 0;
    uc->ops_out = 0;
    opmem_put(c);
}

/* ---- poller life --------------------------------------------------------- */

static void ur_free(struct ur *u)
{
    goev__free(u->boff);
    if (u->bufs)
        munmap(u->bufs, u->bufs_bytes);
    if (u->br)
        munmap(u->br, u->br_bytes);
    goev__free(u);
}

static int ur_poller_init(goev_poller *p)
{
    const struct goev_reactor_opts *o = &p->r->opts;
    unsigned n = o->read_bufs ? o->read_bufs : 1024;
    size_t buf_size = o->read_buf_size ? o->read_buf_size : 4096;
    if (n > MAX_BUFS || (n & (n - 1)) || buf_size > (1u << 31))
        return -EINVAL;
    struct ur *u = goev__calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->nbufs = n;
    u->buf_size = (unsigned)buf_size;
    /* Room in the CQ for a completion per buffer (each one can be sitting
     * in a CQE) plus the one-shot ops; NODROP covers the rest. */
    unsigned cq = 4 * n > CQ_MIN ? 4 * n : CQ_MIN;
    int mode;
    unsigned features;
    int rc = goev__ur_ring_create(&u->ring, SQ_ENTRIES, cq, IORING_SETUP_R_DISABLED, &mode,
                                  &u->ring_fd, &features);
    if (rc < 0) {
        goev__free(u);
        return rc;
    }
    /* Incremental consumption where the kernel has it (6.12): a receive
     * uses only the bytes it fills, so one round trip on each of 10,000
     * idle connections touches a few pages of the ring's memory instead
     * of all of it.  EINVAL: an older kernel; the ring as before. */
    if (!(u->boff = goev__calloc(n, sizeof *u->boff))) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = goev__ur_bufring_register(&u->ring, n, IOU_PBUF_RING_INC, &u->br, &u->br_bytes);
    if (rc == -EINVAL) {
        goev__free(u->boff);
        u->boff = NULL;
        rc = goev__ur_bufring_register(&u->ring, n, 0, &u->br, &u->br_bytes);
    }
    if (rc < 0)
        goto fail;
    long pg = sysconf(_SC_PAGESIZE);
    u->bufs_bytes = ((size_t)n * u->buf_size + (size_t)pg - 1) & ~((size_t)pg - 1);
    u->bufs = mmap(NULL, u->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (u->bufs == MAP_FAILED) {
        u->bufs = NULL;
        rc = -errno;
        goto fail;
    }
    for (unsigned i = 0; i < n; i++)
        give_back(u, i);
    publish_bufs(u);
    p->bd = u;
    return 0;
fail:
    io_uring_queue_exit(&u->ring);
    ur_free(u);
    p->bd = NULL;
    return rc;
}

/* Direct descriptors, where the kernel has everything they need (and an
 * application a way back to a regular fd: FIXED_FD_INSTALL, 6.8, the
 * newest of them) and GOEV_URING_DIRECT is not 0: a sparse file table of
 * GOEV_URING_FILES slots (default: RLIMIT_NOFILE, at most 65536), which
 * the kernel fills (IORING_FILE_INDEX_ALLOC).  Otherwise accepts give fds,
 * as on older kernels. */
static void files_setup(goev_poller *p, struct ur *u)
{
    u->files = 0;
    const char *e = secure_getenv("GOEV_URING_DIRECT");
    if (e && strcmp(e, "0") == 0)
        return;
    unsigned n = 65536;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n)
        n = (unsigned)rl.rlim_cur;
    if ((e = secure_getenv("GOEV_URING_FILES")) && *e) {
        char *end;
        unsigned long v = strtoul(e, &end, 10);
        if (*end || v < 8 || v > n) {
            goev__debug("io_uring poller %d: GOEV_URING_FILES=%s ignored (8..%u)", p->idx, e, n);
        } else {
            n = (unsigned)v;
        }
    }
    if (n < 8)
        return;
    if (!goev__ur_opcode_supported(&u->ring, IORING_OP_FIXED_FD_INSTALL)) {
        goev__debug("io_uring poller %d: no FIXED_FD_INSTALL (kernel < 6.8): regular fds", p->idx);
        return;
    }
    int rc = io_uring_register_files_sparse(&u->ring, n);
    if (rc < 0) {
        goev__debug("io_uring poller %d: sparse file table of %u: %s: regular fds", p->idx, n,
                    strerror(-rc));
        return;
    }
    u->files = n;
    goev__debug("io_uring poller %d: direct descriptors, file table of %u", p->idx, n);
}

static int ur_thread_start(goev_poller *p)
{
    struct ur *u = UR(p);
    /* The ring was created disabled, so that it belongs to (single issuer)
     * the thread that enables it: this one.  liburing 2.3 declares
     * io_uring_enable_rings but does not export it. */
    if (syscall(__NR_io_uring_register, u->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
        return -errno;
    /* Optional: saves an fd lookup per enter.  Registered per thread, so
     * thread_stop undoes it on this same thread. */
    u->fd_registered = io_uring_register_ring_fd(&u->ring) == 1;
    files_setup(p, u);
    u->started = 1;
    int rc;
    rc = arm_wake(p, u);
    if (rc < 0)
        return rc;
    /* What was set up before the ring could take it. */
    for (struct goev__listener *l = p->listeners; l; l = l->next)
        if (l->b.ur.deferred) {
            l->b.ur.deferred = 0;
            if (sq_accept(p, u, l) < 0) {
                l->b.ur.armed = 0;
                goev__on_accept_error(l, -ENOBUFS);
            }
        }
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct goev__conn *c = goev__slot_conn(p, i);
        if (c && UC(c)->deferred)
            submit_deferred(c);
    }
    return 0;
}

static void dispatch(goev_poller *p, struct ur *u, const struct io_uring_cqe *cqe);

static void reap(goev_poller *p, struct ur *u)
{
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
        dispatch(p, u, cqe);
        n++;
    }
    if (n) {
        io_uring_cq_advance(&u->ring, n);
        GOEV__STAT_ADD(p, cqes, n);
        GOEV__STAT_ADD(p, events, n);
    }
    publish_bufs(u);
}

static void ur_thread_stop(goev_poller *p)
{
    struct ur *u = UR(p);
    if (!u || !u->started)
        return;
    u->stopping = 1;
    /* Every request still in the ring (the wake read, accepts) ends with
     * one cancel; their memory must not be freed before their CQEs. */
    struct io_uring_sqe *s = get_sqe(p, u);
    if (s) {
        io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(s, 0);
    }
    uint64_t deadline = goev__now_ms() + 5000;
    while (u->ops_out > 0 && goev__now_ms() < deadline) {
        struct __kernel_timespec ts = { .tv_nsec = 100 * 1000 * 1000 };
        struct io_uring_cqe *cqe;
        int rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        GOEV__STAT_INC(p, sys_wait);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
            break;
        reap(p, u);
    }
    if (u->ops_out > 0)
        goev__debug("io_uring poller %d: %u operations did not finish", p->idx, u->ops_out);
    if (u->fd_registered && io_uring_unregister_ring_fd(&u->ring) == 1)   /* count undone */
        u->fd_registered = 0;
    u->started = 0;
}

static void ur_poller_fini(goev_poller *p)
{
    struct ur *u = UR(p);
    if (!u)
        return;
    if (GOEV__UNLIKELY(u->fd_registered)) {
        /* The poller thread could not unregister the ring fd (cannot
         * happen short of a kernel failure).  io_uring_queue_exit would
         * unregister that index of this thread's table, which may be
         * another ring's: leave the ring be, as a leak. */
        goev__debug("io_uring poller %d: ring fd still registered; ring left open", p->idx);
        p->bd = NULL;
        return;
    }
    io_uring_queue_exit(&u->ring);  /* also drops the buffer ring registration */
    ur_free(u);
    p->bd = NULL;
}

/* ---- connections ------------------------------------------------------------ */

/* Give table slot idx back: an IORING_OP_CLOSE in the next submit (its
 * CQE is only counted), or at once if no SQE can be had. */
static void close_direct(goev_poller *p, struct ur *u, int idx)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (s) {
        io_uring_prep_close_direct(s, (unsigned)idx);
        io_uring_sqe_set_data64(s, 0);
    } else {
        int none = -1;
        io_uring_register_files_update(&u->ring, (unsigned)idx, &none, 1);
        GOEV__STAT_INC(p, sys_other);
    }
    goev__assert(u->files_used > 0);
    u->files_used--;
    /* Listeners that took regular fds while the table was nearly full:
     * end their accepts, whose final CQE re-arms them direct. */
    if (GOEV__UNLIKELY(u->regular_listeners) && files_low(u) && !u->stopping)
        for (struct goev__listener *l = p->listeners; l; l = l->next)
            if (l->b.ur.regular && l->b.ur.armed && !l->b.ur.direct && !l->b.ur.cancel_sent) {
                cancel_ud(p, u, ud_listener(l));
                l->b.ur.cancel_sent = 1;
            }
}

static void maybe_release(struct goev__conn *c)
{
    if (UC(c)->ops_out || UC(c)->handed_back)
        return;
    UC(c)->handed_back = 1;
    /* The core closes fds; a direct descriptor is the backend's to close. */
    if (c->flags & GOEV__C_DIRECT) {
        close_direct(c->p, UR(c->p), c->fd);
        c->fd = -1;
        c->flags &= ~GOEV__C_DIRECT;
    }
    goev__on_released(c);
}

/* A regular fd for direct connection c (goev__conn_fd): FIXED_FD_INSTALL,
 * submitted at once, completes inline; its CQE is picked out of the CQ
 * (neutered, so the batch being reaped counts it and moves on) rather than
 * waited for.  From then on c is a plain-fd connection: its ops in flight
 * hold the same file, a cancel by fd finds them, and the table slot is
 * closed.  One io_uring_enter, once per connection. */
static int ur_fd_install(struct goev__conn *c)
{
    goev__assert(c->flags & GOEV__C_DIRECT);
    goev_poller *p = c->p;
    struct ur *u = UR(p);
    if (!u->started)
        return -EAGAIN;     /* cannot happen: direct fds come from accepts */
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return -EBUSY;
    io_uring_prep_rw(IORING_OP_FIXED_FD_INSTALL, s, c->fd, NULL, 0, 0);
    s->flags = IOSQE_FIXED_FILE;
    s->rw_flags = 0;        /* install_fd_flags: 0 is O_CLOEXEC */
    uint64_t ud = ud_conn(OP_INSTALL, c);
    io_uring_sqe_set_data64(s, ud);
    publish_bufs(u);
    int rc = io_uring_submit(&u->ring);
    GOEV__STAT_INC(p, sys_submit);
    if (rc < 0)
        return rc;      /* the SQE goes with the next submit; dispatch closes its fd */
    struct io_uring_cq *cq = &u->ring.cq;
    unsigned tail = io_uring_smp_load_acquire(cq->ktail);
    for (unsigned head = *cq->khead; head != tail; head++) {
        struct io_uring_cqe *cqe = &cq->cqes[head & *cq->kring_mask];
        if (cqe->user_data != ud)
            continue;
        cqe->user_data = 0;     /* taken: OP_IGNORE */
        if (cqe->res < 0)
            return cqe->res;
        close_direct(p, u, c->fd);
        c->fd = cqe->res;
        c->flags &= ~GOEV__C_DIRECT;
        return 0;
    }
    return -EAGAIN;     /* not posted yet (CQ overflow): dispatch closes its fd */
}

static int ur_conn_start(struct goev__conn *c)
{
    if (c->flags & GOEV__C_CLOSING)
        return -ENOTCONN;
    if (UC(c)->recv_armed)     /* a pending cancel's CQE re-arms it */
        return 0;
    return arm_recv(c);
}

static void ur_conn_pause(struct goev__conn *c)
{
    if (!UC(c)->recv_armed || UC(c)->cancel_sent)
        return;
    goev_poller *p = c->p;
    struct ur *u = UR(p);
    if (!u->started) {      /* deferred: no SQE yet */
        UC(c)->recv_armed = 0;
        op_done(c);
        return;
    }
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return;     /* recv stays armed; the data is kept as the tail */
    io_uring_prep_cancel64(s, ud_conn(OP_RECV, c), 0);
    io_uring_sqe_set_data64(s, ud_conn(OP_CANCEL_RECV, c));
    UC(c)->cancel_sent = 1;
    /* Submit now rather than with the next wait: every byte the recv takes
     * before the cancel lands is read behind the paused application's back
     * (kept as the tail), while the point of pausing is to leave it in the
     * kernel and push back on the peer.  Pauses are rare; one enter is
     * cheap next to buffering a burst.  Not so a pause on the way to a
     * close (goev_close with output queued): nothing read from then on
     * is kept, and with short-lived connections that enter would be one
     * per connection; the cancel goes with the pass's wait instead. */
    if (c->flags & GOEV__C_CLOSE_WANT)
        return;
    publish_bufs(u);
    io_uring_submit(&u->ring);
    GOEV__STAT_INC(p, sys_submit);
}

/* Wait, in the kernel, for room in c's socket: one-shot POLLOUT, counted
 * as c's output op (send_armed), whose completion flushes again. */
static void arm_writable(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s) {
        goev__on_error(c, -EBUSY);
        return;
    }
    io_uring_prep_poll_add(s, c->fd, POLLOUT);
    sqe_file(s, c);
    io_uring_sqe_set_data64(s, ud_conn(OP_WRITABLE, c));
    UC(c)->send_armed = 1;
    UC(c)->ops_out++;
}

/* A file range at the head of the queue.  sendfile(2) on the poller thread
 * takes as much as the socket buffer holds, straight from the page cache;
 * when it holds nothing more, a POLLOUT waits in the ring (the measurements
 * behind this choice are in bench/README.md).  Returns true if the queue
 * goes on with memory bytes that a SEND should carry now. */
static bool send_file(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct goev__fileref *f;
    while ((f = goev__outq_head_file(&c->out))) {
        size_t want = f->left < FILE_SLICE ? (size_t)f->left : FILE_SLICE;
        off_t off = (off_t)f->off;
        ssize_t w = sendfile(c->fd, f->fd, &off, want);
        GOEV__STAT_INC(p, sys_write);
        if (w == 0) {
            goev__on_error(c, -ENODATA);    /* the file ended before the range */
            return false;
        }
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                goev__on_error(c, -errno);
                return false;
            }
            w = 0;
        }
        goev__on_sent(c, (size_t)w, (size_t)w < want);
        if (c->flags & GOEV__C_CLOSING)
            return false;
        if ((size_t)w < want) {
            if (c->out.bytes)
                arm_writable(c);
            return false;
        }
    }
    return c->out.bytes > 0;
}

static void ur_flush(struct goev__conn *c)
{
    if (UC(c)->send_armed || UC(c)->connect_armed || (c->flags & GOEV__C_CLOSING))
        return;
    if (goev__outq_head_file(&c->out) && !send_file(c))
        return;
    size_t bytes;
    struct iovec iov[SEND_IOV];
    int n = goev__outq_iov(&c->out, c->out.inflight, iov, SEND_IOV, &bytes);
    if (n <= 0 || !bytes)
        return;
    goev_poller *p = c->p;
    union ur_opmem *m = NULL;
    if (n > 1 && !(m = opmem_get(c))) {     /* a SENDMSG reads these until it completes */
        /* No memory for the SENDMSG header: send the first chunk alone
         * (a SEND needs none); the rest follows when it completes. */
        n = 1;
        bytes = iov[0].iov_len;
    }
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s) {
        opmem_put(c);
        goev__on_error(c, -EBUSY);
        return;
    }
    if (n == 1) {
        io_uring_prep_send(s, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memcpy(m->send.iov, iov, (size_t)n * sizeof iov[0]);
        memset(&m->send.msg, 0, sizeof m->send.msg);
        m->send.msg.msg_iov = m->send.iov;
        m->send.msg.msg_iovlen = (size_t)n;
        io_uring_prep_sendmsg(s, c->fd, &m->send.msg, MSG_NOSIGNAL);
    }
    sqe_file(s, c);
    io_uring_sqe_set_data64(s, ud_conn(OP_SEND, c));
    c->out.inflight = bytes;
    UC(c)->send_armed = 1;
    UC(c)->ops_out++;
}

static void ur_conn_close(struct goev__conn *c)
{
    if (!UC(c)->close_sent) {
        UC(c)->close_sent = 1;
        if (UC(c)->ops_out) {
            goev_poller *p = c->p;
            struct ur *u = UR(p);
            if (!u->started) {
                drop_deferred(c);
            } else {
                /* Every op of c is on c->fd, and the fd stays open (so its
                 * number cannot be reused) until the last CQE is in. */
                struct io_uring_sqe *s = get_sqe(p, u);
                if (s) {
                    io_uring_prep_cancel_fd(s, c->fd, IORING_ASYNC_CANCEL_ALL |
                                            ((c->flags & GOEV__C_DIRECT) ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
                    io_uring_sqe_set_data64(s, 0);
                } else if (!(c->flags & (GOEV__C_KEEP_FD | GOEV__C_DIRECT))) {
                    shutdown(c->fd, SHUT_RDWR);     /* ends recv and send alike */
                }
            }
        }
    }
    maybe_release(c);
}

static int ur_watch(struct goev__conn *c, unsigned events)
{
    goev_poller *p = c->p;
    struct ur *u = UR(p);
    UC(c)->poll_want = (uint8_t)(events & (GOEV_READ | GOEV_WRITE));
    if (UC(c)->poll_armed) {
        if (UC(c)->poll_mask == UC(c)->poll_want || UC(c)->poll_cancel)
            return 0;
        if (!u->started) {      /* deferred: re-armed below with poll_want */
            UC(c)->poll_armed = 0;
            op_done(c);
        } else {
            /* The poll's final CQE (-ECANCELED) re-arms with poll_want. */
            struct io_uring_sqe *s = get_sqe(p, u);
            if (!s)
                return -EBUSY;
            io_uring_prep_poll_remove(s, ud_conn(OP_POLL, c));
            io_uring_sqe_set_data64(s, 0);
            UC(c)->poll_cancel = 1;
            return 0;
        }
    }
    if (UC(c)->poll_want && !UC(c)->poll_armed)
        return arm_poll(c);
    return 0;
}

static int ur_connect(struct goev__conn *c, const struct sockaddr *sa, socklen_t len)
{
    union ur_opmem *m;
    if (len > sizeof m->connect.addr)
        return -EINVAL;
    if (!(m = opmem_get(c)))        /* the CONNECT reads it until it completes */
        return -ENOMEM;
    memcpy(&m->connect.addr, sa, len);
    m->connect.len = len;
    int rc = arm_connect(c);
    if (rc < 0)
        opmem_put(c);
    return rc;
}

/* ---- listeners ----------------------------------------------------------------- */

static int ur_listen_start(struct goev__listener *l)
{
    l->b.ur.want = 1;
    if (l->b.ur.armed)      /* a pending cancel's CQE re-arms it */
        return 0;
    return arm_accept(l->p, UR(l->p), l);
}

static void ur_listen_stop(struct goev__listener *l)
{
    l->b.ur.want = 0;
    if (!l->b.ur.armed || l->b.ur.cancel_sent)
        return;
    goev_poller *p = l->p;
    struct ur *u = UR(p);
    if (!u || u->stopping)
        return;     /* thread_stop cancels (or has cancelled) everything */
    if (!u->started) {      /* deferred: no SQE yet */
        l->b.ur.armed = 0;
        l->b.ur.deferred = 0;
        return;
    }
    cancel_ud(p, u, ud_listener(l));
    l->b.ur.cancel_sent = 1;
}

/* ---- completions ----------------------------------------------------------------- */

static void on_recv(goev_poller *p, struct ur *u, struct goev__conn *c, int res, unsigned flags)
{
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        char *data = u->bufs + (size_t)bid * u->buf_size;
        if (u->boff) {
            /* Incremental: the bytes follow the ones the kernel put in
             * this buffer before; while F_BUF_MORE says it keeps the rest,
             * the buffer is not ours to give back. */
            data += u->boff[bid];
            if (res > 0)
                u->boff[bid] += (uint32_t)res;
        }
        if (res > 0 && !(c->flags & GOEV__C_CLOSING))
            goev__on_data(c, data, (size_t)res);
        if (!u->boff || !(flags & IORING_CQE_F_BUF_MORE)) {
            if (u->boff)
                u->boff[bid] = 0;
            give_back(u, bid);
        }
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    goev__assert(UC(c)->recv_armed);
    UC(c)->recv_armed = 0;
    UC(c)->cancel_sent = 0;
    op_done(c);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    if (res == 0) {
        /* EOF can come in the same batch as data that arrived after a
         * pause (kept as the tail, not yet read by the application).
         * Reporting it now would close before the tail is seen; a fresh
         * recv after the resume finds the EOF again, behind the tail. */
        if (!(c->flags & GOEV__C_NOREAD))
            goev__on_eof(c);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EAGAIN) {
        goev__on_error(c, res);
    } else if (goev__reading_wanted(c->flags)) {
        /* Out of buffers, multishot ended (EAGAIN: as for SEND below), or
         * a resume overtook a pause's cancel: read on.  Buffers given back in this pass are published
         * before the new recv is submitted. */
        if (res == -ENOBUFS)
            GOEV__STAT_INC(p, enobufs);
        if (res != -ECANCELED)
            GOEV__STAT_INC(p, rearms);
        int rc = arm_recv(c);
        if (rc < 0)
            goev__on_error(c, rc);
    }
    if (c->flags & GOEV__C_CLOSING)
        maybe_release(c);
}

static void on_send(struct goev__conn *c, int res)
{
    goev__assert(UC(c)->send_armed);
    size_t offered = c->out.inflight;
    c->out.inflight = 0;
    opmem_put(c);
    UC(c)->send_armed = 0;
    op_done(c);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    /* A SEND that used up its poll retries finishes in io-wq, where a
     * non-blocking socket says EAGAIN: nothing was taken, try again. */
    if (res == -EAGAIN)
        res = 0;
    if (res < 0) {
        goev__on_error(c, res);
    } else {
        /* "Blocked" also when bytes queued behind this SEND are left: the
         * queue did not empty in one go, so an application that paused on
         * goev_pending() needs on_drained when it finally does (a SEND may
         * wait in the kernel and still take everything it carried). */
        bool blocked = (size_t)res < offered || c->out.bytes > (size_t)res;
        goev__on_sent(c, (size_t)res, blocked);
        if (!(c->flags & GOEV__C_CLOSING) && c->out.bytes)
            goev__mark_dirty(c);
    }
    if (c->flags & GOEV__C_CLOSING)
        maybe_release(c);
}

static void on_writable(struct goev__conn *c, int res)
{
    goev__assert(UC(c)->send_armed);
    UC(c)->send_armed = 0;
    op_done(c);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    /* Ready, or an error the next sendfile reports with its real errno. */
    if (res < 0 && res != -ECANCELED)
        goev__on_error(c, res);
    else if (c->out.bytes)
        goev__mark_dirty(c);
    if (c->flags & GOEV__C_CLOSING)
        maybe_release(c);
}

static void on_poll(struct goev__conn *c, int res)
{
    goev__assert(UC(c)->poll_armed);
    UC(c)->poll_armed = 0;
    UC(c)->poll_cancel = 0;
    op_done(c);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    if (res >= 0) {
        unsigned ev = ((res & POLLIN) ? GOEV_READ : 0) | ((res & POLLOUT) ? GOEV_WRITE : 0);
        ev &= UC(c)->poll_want;
        if (res & (POLLERR | POLLHUP | POLLNVAL))
            ev |= GOEV_ERROR;
        if (ev)
            goev__on_ready(c, ev);
    } else if (res != -ECANCELED) {
        goev__on_error(c, res);
    }
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    /* One-shot and re-armed after the callback: still ready means another
     * CQE at once, which is level-triggered behaviour. */
    if (UC(c)->poll_want && !UC(c)->poll_armed) {
        int rc = arm_poll(c);
        if (rc < 0)
            goev__on_error(c, rc);
    }
}

static void on_connect(struct goev__conn *c, int res)
{
    goev__assert(UC(c)->connect_armed);
    UC(c)->connect_armed = 0;
    op_done(c);
    opmem_put(c);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    goev__on_connected(c, res);
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    if (c->out.bytes > c->out.inflight)   /* written while connecting */
        goev__mark_dirty(c);
}

static void on_accept(goev_poller *p, struct ur *u, struct goev__listener *l, int res,
                      unsigned flags)
{
    bool direct = l->b.ur.direct;
    if (!(flags & IORING_CQE_F_MORE)) {
        goev__assert(l->b.ur.armed);
        l->b.ur.armed = 0;
        l->b.ur.cancel_sent = 0;
    }
    if (u->stopping) {
        if (res >= 0 && !direct) {      /* the ring's teardown closes the table */
            close(res);
            GOEV__STAT_INC(p, sys_other);
        }
        return;
    }
    if (res >= 0 && direct) {
        u->files_used++;
        if (goev__on_accept_direct(l, res) < 0)
            close_direct(p, u, res);
        /* Nearly full: end this accept; its final CQE re-arms it for fds. */
        if (files_high(u) && l->b.ur.armed && !l->b.ur.cancel_sent) {
            cancel_ud(p, u, ud_listener(l));
            l->b.ur.cancel_sent = 1;
        }
    } else if (res >= 0) {
        goev__on_accept(l, res);
    } else if (res == -ENFILE && direct) {
        /* The table filled faster than the 7/8 mark could tell (the kernel
         * dropped that connection): the re-arm below accepts fds. */
        goev__debug("io_uring poller %d: file table full (%u)", p->idx, u->files_used);
    } else if (res != -ECANCELED) {
        goev__on_accept_error(l, res);  /* may stop us (back-off) */
    }
    if (!l->b.ur.armed && l->b.ur.want) {
        if (res != -ECANCELED)
            GOEV__STAT_INC(p, rearms);
        if (arm_accept(p, u, l) < 0)
            goev__on_accept_error(l, -ENOBUFS);
    }
}

static void on_wake(goev_poller *p, struct ur *u, int res)
{
    u->wake_armed = 0;
    if (u->stopping)
        return;
    if (res == -EAGAIN) {
        /* Kernels that honour O_NONBLOCK for io_uring reads would complete
         * at once, forever: let the read wait in the kernel instead. */
        int fl = fcntl(p->wake_fd, F_GETFL);
        if (fl >= 0)
            fcntl(p->wake_fd, F_SETFL, fl & ~O_NONBLOCK);
        GOEV__STAT_ADD(p, sys_other, 2);
    }
    arm_wake(p, u);     /* the loop drains the queue every pass */
}

static void dispatch(goev_poller *p, struct ur *u, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    unsigned op = ud_op(ud);
    unsigned flags = cqe->flags;
    int res = cqe->res;
    if (!(flags & IORING_CQE_F_MORE)) {
        goev__assert(u->ops_out > 0);
        u->ops_out--;
    }
    switch (op) {
    case OP_IGNORE:
        return;
    case OP_WAKE:
        on_wake(p, u, res);
        return;
    case OP_ACCEPT:
        on_accept(p, u, ud_to_listener(ud), res, flags);
        return;
    case OP_INSTALL:    /* an fd that ur_fd_install gave up on */
        if (res >= 0) {
            close(res);
            GOEV__STAT_INC(p, sys_other);
        }
        return;
    default:
        break;
    }
    struct goev__conn *c = goev__slot_conn(p, ud_slot(ud));
    if (GOEV__UNLIKELY(!c || goev__gen(c) != ud_gen(ud))) {
        /* A slot is released only after the final CQE of each of its ops;
         * only a pause's cancel (not one of them) can complete after the
         * recv it ended, and so find the slot gone.  Never touch it. */
        goev__assert(op == OP_CANCEL_RECV);
        if (flags & IORING_CQE_F_BUFFER)
            give_back(u, flags >> IORING_CQE_BUFFER_SHIFT);
        return;
    }
    switch (op) {
    case OP_RECV:
        on_recv(p, u, c, res, flags);
        break;
    case OP_CANCEL_RECV:
        /* EALREADY: the recv was running; it may go on, so ask again. */
        if (res == -EALREADY && UC(c)->recv_armed && UC(c)->cancel_sent &&
            (c->flags & GOEV__C_NOREAD) && !(c->flags & GOEV__C_CLOSING)) {
            UC(c)->cancel_sent = 0;
            ur_conn_pause(c);
        }
        break;
    case OP_SEND:
        on_send(c, res);
        break;
    case OP_WRITABLE:
        on_writable(c, res);
        break;
    case OP_POLL:
        on_poll(c, res);
        break;
    case OP_CONNECT:
        on_connect(c, res);
        break;
    default:
        goev__assert(!"user_data with an unknown op");
        break;
    }
}

static int ur_wait(goev_poller *p, int timeout_ms)
{
    struct ur *u = UR(p);
    struct io_uring *ring = &u->ring;
    publish_bufs(u);
    int rc = 0;
    /* Completions already waiting and nothing to submit: no enter needed
     * (with DEFER_TASKRUN the next pass's enter runs the deferred work). */
    if (io_uring_cq_ready(ring) && !io_uring_sq_ready(ring)) {
        rc = 0;
    } else if (timeout_ms == 0) {
        rc = io_uring_submit_and_get_events(ring);
        GOEV__STAT_INC(p, sys_wait);
    } else if (timeout_ms < 0) {
        rc = io_uring_submit_and_wait(ring, 1);
        GOEV__STAT_INC(p, sys_wait);
    } else {
        struct __kernel_timespec ts = {
            .tv_sec = timeout_ms / 1000,
            .tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
        };
        struct io_uring_cqe *cqe;
        rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
        GOEV__STAT_INC(p, sys_wait);
    }
    /* ETIME and EINTR are a quiet wake-up; EBUSY/EAGAIN mean the CQ is
     * backed up (NODROP): reaping below is the cure. */
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
        return rc;
    reap(p, u);
    return 0;
}

const struct goev__backend goev__uring_backend = {
    .name = "io_uring",
    .conn_priv = sizeof(struct ur_conn),
    .probe = goev__ur_probe,
    .poller_init = ur_poller_init,
    .thread_start = ur_thread_start,
    .thread_stop = ur_thread_stop,
    .poller_fini = ur_poller_fini,
    .conn_start = ur_conn_start,
    .conn_pause = ur_conn_pause,
    .flush = ur_flush,
    .conn_close = ur_conn_close,
    .watch = ur_watch,
    .listen_start = ur_listen_start,
    .listen_stop = ur_listen_stop,
    .connect = ur_connect,
    .fd_install = ur_fd_install,
    .wait = ur_wait,
};
