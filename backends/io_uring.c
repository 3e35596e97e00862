/* io_uring.c - the completion backend (liburing 2.3).
 *
 *   ring:    SINGLE_ISSUER | DEFER_TASKRUN (then COOP_TASKRUN | TASKRUN_FLAG,
 *            then nothing), created disabled on the reactor's thread and
 *            enabled on the poller's, because a single-issuer ring belongs
 *            to the task that enables it
 *   input:   one multishot recv per connection into a provided-buffer ring;
 *            a buffer goes back to the ring as soon as on_read returns
 *   output:  at most one SEND/SENDMSG in flight per connection, carrying
 *            everything queued when the pass ended
 *   accept:  multishot accept; watches: one-shot POLL_ADD re-armed after
 *            each callback, which is what level-triggered means
 *   loop:    one io_uring_enter per pass submits and waits; CQEs are drained
 *            in one batch and the buffers returned are published once
 *
 * user_data = op:8 | slot:24 | gen:32 for connections, so that a CQE for a
 * connection that is gone (its slot reused) is recognised and dropped.
 * Listeners are not slots: their pointer (>> 3) fills the low 56 bits. */
#include "goev-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    OP_IGNORE = 0,  /* cancels, poll removes, NOPs: only counted */
    OP_RECV,
    OP_SEND,
    OP_POLL,
    OP_CONNECT,
    OP_ACCEPT,
    OP_WAKE,
    OP_CANCEL_RECV, /* a pause's cancel: retried if the recv was busy */
    OP_WRITABLE,    /* POLLOUT wait of a file send the socket had no room for */
};

enum {
    SQ_ENTRIES = 4096,      /* also the most work that can be set up before start */
    CQ_MIN = 16384,
    BGID = 0,
    MAX_BUFS = 32768,       /* kernel limit of a buffer ring */
};

#define FILE_SLICE ((size_t)1 << 30)   /* most one sendfile is asked for */

#define UD_OP(ud) ((unsigned)((ud) >> 56))
#define UD_CONN(op, c) (((uint64_t)(op) << 56) | ((uint64_t)(c)->slot << 32) | goev__gen(c))
#define UD_LISTENER(l) (((uint64_t)OP_ACCEPT << 56) | ((uint64_t)(uintptr_t)(l) >> 3))
#define UD_WAKE ((uint64_t)OP_WAKE << 56)

/* liburing 2.3's private flag for "ring fd registered"; see ur_poller_fini. */
#define URING_INT_FLAG_REG_RING 1
struct ur {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    size_t br_bytes, bufs_bytes;
    unsigned nbufs, buf_size;
    unsigned nret;          /* buffers given back, not yet published */
    unsigned live;          /* requests whose last CQE has not come */
    int started;            /* ring enabled by this poller's thread: may submit */
    int stopping;           /* thread_stop: nothing is re-armed */
    int wake_armed;
    uint64_t wake_val;
    pthread_t owner;
};

static inline struct ur *UR(goev_poller *p) { return p->bd; }

/* ---- ring setup ---------------------------------------------------------- */

static const struct {
    unsigned flags;
    const char *name;
} ring_modes[] = {
    { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN" },
    { IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, "COOP_TASKRUN|TASKRUN_FLAG" },
    { 0, "no setup flags" },
};

/* Create a ring with the best flags the kernel takes; *mode gets the index
 * into ring_modes.  Only EINVAL (flag unknown to the kernel) steps down. */
static int ring_create(struct io_uring *ring, unsigned entries, unsigned cq, unsigned extra,
                       int *mode)
{
    int rc = -EINVAL;
    for (int i = 0; i < (int)(sizeof ring_modes / sizeof ring_modes[0]); i++) {
        struct io_uring_params prm;
        memset(&prm, 0, sizeof prm);
        prm.flags = ring_modes[i].flags | extra | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        prm.cq_entries = cq;
        rc = io_uring_queue_init_params(entries, ring, &prm);
        if (rc == 0) {
            *mode = i;
            return 0;
        }
        if (rc != -EINVAL)
            return rc;
    }
    return rc;
}

/* Page-aligned buffer ring with n entries (a power of two), registered as
 * group BGID.  liburing 2.3 has no io_uring_setup_buf_ring. */
static int bufring_register(struct io_uring *ring, unsigned n, struct io_uring_buf_ring **out,
                            size_t *bytes)
{
    size_t sz = (size_t)n * sizeof(struct io_uring_buf);
    long pg = sysconf(_SC_PAGESIZE);
    sz = (sz + (size_t)pg - 1) & ~((size_t)pg - 1);
    void *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uintptr_t)m;
    reg.ring_entries = n;
    reg.bgid = BGID;
    int rc = io_uring_register_buf_ring(ring, &reg, 0);
    if (rc < 0) {
        munmap(m, sz);
        return rc;
    }
    io_uring_buf_ring_init(m);
    *out = m;
    *bytes = sz;
    return 0;
}

/* ---- probe ----------------------------------------------------------------- */

static int why_errno(char *why, size_t len, const char *what, int rc)
{
    snprintf(why, len, "%s: %s", what, strerror(-rc));
    return rc;
}

/* Multishot recv into a provided buffer, on a non-blocking socketpair like
 * the ones goev uses: one byte in, one CQE with a buffer and F_MORE out. */
static int self_test(struct io_uring *ring, char *why, size_t len)
{
    struct io_uring_buf_ring *br;
    size_t brb;
    int rc = bufring_register(ring, 2, &br, &brb);
    if (rc < 0)
        return why_errno(why, len, "io_uring_register_buf_ring", rc == -EINVAL ? -EOPNOTSUPP : rc);
    static char bufs[2][64];
    for (int i = 0; i < 2; i++)
        io_uring_buf_ring_add(br, bufs[i], sizeof bufs[i], (unsigned short)i, 1, i);
    io_uring_buf_ring_advance(br, 2);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        rc = why_errno(why, len, "socketpair", -errno);
        goto out_ring;
    }
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    io_uring_prep_recv_multishot(s, sv[0], NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, 1);
    if (write(sv[1], "g", 1) != 1) {
        rc = why_errno(why, len, "socketpair write", -errno);
        goto out_sock;
    }
    struct __kernel_timespec ts = { .tv_sec = 1 };
    struct io_uring_cqe *cqe = NULL;
    rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
    if (rc < 0 && rc != -ETIME) {
        /* A refused system call keeps its errno; anything else means the
         * kernel cannot do what goev needs. */
        why_errno(why, len, "multishot recv self-test", rc);
        if (rc != -EPERM && rc != -ENOSYS && rc != -ENOMEM)
            rc = -EOPNOTSUPP;
        goto out_sock;
    }
    if (io_uring_peek_cqe(ring, &cqe) < 0 || !cqe) {
        snprintf(why, len, "multishot recv self-test: no completion");
        rc = -EOPNOTSUPP;
        goto out_sock;
    }
    if (cqe->res != 1 || !(cqe->flags & IORING_CQE_F_BUFFER) || !(cqe->flags & IORING_CQE_F_MORE)) {
        snprintf(why, len, "multishot recv self-test: res %d flags %#x", cqe->res, cqe->flags);
        rc = -EOPNOTSUPP;
        goto out_sock;
    }
    rc = 0;
out_sock:
    /* End the multishot recv here and reap what it posts.  Left for the
     * ring's teardown, its cancellation would be task work aimed at this
     * thread - the application's - and would interrupt a blocking call
     * there with EINTR (seen on a connect with SO_SNDTIMEO). */
    io_uring_cq_advance(ring, io_uring_cq_ready(ring));
    s = io_uring_get_sqe(ring);
    if (s) {
        io_uring_prep_cancel64(s, 1, 0);
        io_uring_sqe_set_data64(s, 2);
        bool recv_done = false, cancel_done = false;
        struct __kernel_timespec t1 = { .tv_nsec = 200 * 1000 * 1000 };
        if (io_uring_submit(ring) >= 0) {
            while (!(recv_done && cancel_done) &&
                   io_uring_wait_cqe_timeout(ring, &cqe, &t1) == 0) {
                if (cqe->user_data == 2)
                    cancel_done = true;
                else if (!(cqe->flags & IORING_CQE_F_MORE))
                    recv_done = true;
                io_uring_cqe_seen(ring, cqe);
            }
        }
    }
    close(sv[0]);
    close(sv[1]);
out_ring:
    io_uring_unregister_buf_ring(ring, BGID);
    munmap(br, brb);
    return rc;
}

static int ur_probe(char *why, size_t len)
{
    struct io_uring ring;
    int mode;
    int rc = ring_create(&ring, 8, 16, 0, &mode);
    if (rc < 0)
        return why_errno(why, len, "io_uring_setup", rc);
    static const struct {
        unsigned bit;
        const char *name;
    } feats[] = {
        { IORING_FEAT_FAST_POLL, "IORING_FEAT_FAST_POLL" },
        { IORING_FEAT_NODROP, "IORING_FEAT_NODROP" },
        { IORING_FEAT_EXT_ARG, "IORING_FEAT_EXT_ARG" },
    };
    for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++)
        if (!(ring.features & feats[i].bit)) {
            snprintf(why, len, "kernel lacks %s", feats[i].name);
            rc = -EOPNOTSUPP;
            goto out;
        }
    /* io_uring_get_probe_ring would hide the errno (a sandbox that allows
     * io_uring_setup but not io_uring_register answers EPERM). */
    enum { PROBE_OPS = 256 };
    struct io_uring_probe *pr = goev__calloc(1, sizeof *pr + PROBE_OPS * sizeof(struct io_uring_probe_op));
    if (!pr) {
        rc = -ENOMEM;
        goto out;
    }
    rc = io_uring_register_probe(&ring, pr, PROBE_OPS);
    if (rc < 0) {
        why_errno(why, len, "io_uring opcode probe (io_uring_register)", rc);
        goev__free(pr);
        goto out;
    }
    static const struct {
        int op;
        const char *name;
    } ops[] = {
        { IORING_OP_RECV, "RECV" }, { IORING_OP_SEND, "SEND" }, { IORING_OP_SENDMSG, "SENDMSG" },
        { IORING_OP_ACCEPT, "ACCEPT" }, { IORING_OP_CONNECT, "CONNECT" },
        { IORING_OP_POLL_ADD, "POLL_ADD" }, { IORING_OP_POLL_REMOVE, "POLL_REMOVE" },
        { IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL" }, { IORING_OP_READ, "READ" },
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (!io_uring_opcode_supported(pr, ops[i].op)) {
            snprintf(why, len, "kernel lacks IORING_OP_%s", ops[i].name);
            rc = -EOPNOTSUPP;
            break;
        }
    goev__free(pr);
    if (rc == 0)
        rc = self_test(&ring, why, len);
    if (rc == 0)
        snprintf(why, len, "%s", ring_modes[mode].name);
out:
    io_uring_queue_exit(&ring);
    return rc;
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

/* An SQE, pushing the SQ out if it is full.  Only the poller thread may
 * submit (and only once it enabled the ring); before that, a full SQ is an
 * error.  Every SQE handed out must produce one final CQE: it is counted. */
static struct io_uring_sqe *get_sqe(goev_poller *p, struct ur *u)
{
    struct io_uring_sqe *s = io_uring_get_sqe(&u->ring);
    if (GOEV__UNLIKELY(!s)) {
        if (!u->started)
            return NULL;
        publish_bufs(u);
        io_uring_submit(&u->ring);
        GOEV__STAT_INC(p, sys_submit);
        s = io_uring_get_sqe(&u->ring);
        if (!s)
            return NULL;
    }
    u->live++;
    return s;
}

/* Before the ring runs nothing has reached the kernel, so "cancelling" is
 * turning our own unsubmitted SQEs into NOPs (a NOP still completes, which
 * keeps u->live right).  The SQEs picked are those with user_data ud, or
 * with any_conn_op, every connection op of ud's slot and generation.
 * Returns how many. */
static unsigned nop_out(struct ur *u, uint64_t ud, bool any_conn_op)
{
    struct io_uring_sq *sq = &u->ring.sq;
    unsigned n = 0;
    for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++) {
        struct io_uring_sqe *s = &sq->sqes[i & sq->ring_mask];
        uint64_t x = s->user_data;
        bool hit;
        if (any_conn_op)
            hit = (x & 0x00ffffffffffffffull) == (ud & 0x00ffffffffffffffull) &&
                  ((UD_OP(x) >= OP_RECV && UD_OP(x) <= OP_CONNECT) || UD_OP(x) >= OP_CANCEL_RECV);
        else
            hit = x == ud;
        if (hit && s->opcode != IORING_OP_NOP) {
            io_uring_prep_nop(s);
            s->flags = 0;
            io_uring_sqe_set_data64(s, 0);
            n++;
        }
    }
    return n;
}

static void cancel_ud(goev_poller *p, struct ur *u, uint64_t ud)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (s) {
        io_uring_prep_cancel64(s, ud, 0);
        io_uring_sqe_set_data64(s, 0);
    }
}

static int arm_recv(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    io_uring_prep_recv_multishot(s, c->fd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, UD_CONN(OP_RECV, c));
    c->b.ur.recv_armed = 1;
    c->b.ur.inflight++;
    return 0;
}

static int arm_poll(struct goev__conn *c)
{
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    unsigned want = c->b.ur.poll_want;
    unsigned mask = ((want & GOEV_READ) ? POLLIN : 0) | ((want & GOEV_WRITE) ? POLLOUT : 0);
    io_uring_prep_poll_add(s, c->fd, mask);
    io_uring_sqe_set_data64(s, UD_CONN(OP_POLL, c));
    c->b.ur.poll_armed = 1;
    c->b.ur.poll_mask = (uint8_t)want;
    c->b.ur.inflight++;
    return 0;
}

static int arm_accept(goev_poller *p, struct ur *u, struct goev__listener *l)
{
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return -EBUSY;
    io_uring_prep_multishot_accept(s, l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, UD_LISTENER(l));
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

/* ---- poller life --------------------------------------------------------- */

static void ur_free(struct ur *u)
{
    if (u->bufs)
        munmap(u->bufs, u->bufs_bytes);
    if (u->br)
        munmap(u->br, u->br_bytes);
    goev__free(u);
}

static int ur_poller_init(goev_poller *p)
{
    unsigned n = p->rbufs ? p->rbufs : 1024;
    if (n > MAX_BUFS || (n & (n - 1)))
        return -EINVAL;
    if (!p->rbuf_size)
        p->rbuf_size = 4096;
    if (p->rbuf_size > (1u << 31))
        return -EINVAL;
    struct ur *u = goev__calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->nbufs = n;
    u->buf_size = (unsigned)p->rbuf_size;
    /* Room in the CQ for a completion per buffer (each one can be sitting
     * in a CQE) plus the one-shot ops; NODROP covers the rest. */
    unsigned cq = 4 * n > CQ_MIN ? 4 * n : CQ_MIN;
    int mode;
    int rc = ring_create(&u->ring, SQ_ENTRIES, cq, IORING_SETUP_R_DISABLED, &mode);
    if (rc < 0) {
        goev__free(u);
        return rc;
    }
    rc = bufring_register(&u->ring, n, &u->br, &u->br_bytes);
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
    rc = arm_wake(p, u);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    io_uring_queue_exit(&u->ring);
    ur_free(u);
    p->bd = NULL;
    return rc;
}

static int ur_thread_start(goev_poller *p)
{
    struct ur *u = UR(p);
    /* liburing 2.3 declares io_uring_enable_rings but does not export it. */
    int rc = io_uring_register(u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (rc < 0)
        return rc;
    /* Optional: saves an fd lookup per enter.  Registered per thread, so
     * thread_stop undoes it on this same thread. */
    io_uring_register_ring_fd(&u->ring);
    u->owner = pthread_self();
    u->started = 1;
    return 0;
}

static void dispatch(goev_poller *p, struct ur *u, const struct io_uring_cqe *cqe);

static unsigned reap(goev_poller *p, struct ur *u)
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
    return n;
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
    while (u->live > 0 && goev__now_ms() < deadline) {
        struct __kernel_timespec ts = { .tv_nsec = 100 * 1000 * 1000 };
        struct io_uring_cqe *cqe;
        int rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        GOEV__STAT_INC(p, sys_wait);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
            break;
        reap(p, u);
    }
    if (u->live > 0)
        fprintf(stderr, "goev: io_uring poller %d: %u operations did not finish\n", p->idx, u->live);
    io_uring_unregister_ring_fd(&u->ring);
    u->started = 0;
}

static void ur_poller_fini(goev_poller *p)
{
    struct ur *u = UR(p);
    if (!u)
        return;
    /* A ring fd still registered belongs to the poller thread's table;
     * unregistering it from here would hit another ring's slot. */
    if ((u->ring.int_flags & URING_INT_FLAG_REG_RING) && !pthread_equal(u->owner, pthread_self()))
        u->ring.int_flags &= (__u8)~URING_INT_FLAG_REG_RING;
    io_uring_queue_exit(&u->ring);  /* also drops the buffer ring registration */
    ur_free(u);
    p->bd = NULL;
}

/* ---- connections ------------------------------------------------------------ */

static void maybe_release(struct goev__conn *c)
{
    if (c->b.ur.inflight || c->b.ur.released)
        return;
    c->b.ur.released = 1;
    if (c->fd >= 0 && !(c->flags & GOEV__C_KEEP_FD)) {
        close(c->fd);
        GOEV__STAT_INC(c->p, sys_other);
    }
    goev__on_released(c);
}

static int ur_conn_start(struct goev__conn *c)
{
    if (c->flags & GOEV__C_CLOSING)
        return -ENOTCONN;
    if (c->b.ur.recv_armed)     /* a pending cancel's CQE re-arms it */
        return 0;
    return arm_recv(c);
}

static void ur_conn_pause(struct goev__conn *c)
{
    if (!c->b.ur.recv_armed || c->b.ur.cancel_sent)
        return;
    goev_poller *p = c->p;
    struct ur *u = UR(p);
    if (!u->started) {
        if (nop_out(u, UD_CONN(OP_RECV, c), false)) {
            c->b.ur.recv_armed = 0;
            c->b.ur.inflight--;
        }
        return;
    }
    struct io_uring_sqe *s = get_sqe(p, u);
    if (!s)
        return;     /* recv stays armed; the data is kept as the tail */
    io_uring_prep_cancel64(s, UD_CONN(OP_RECV, c), 0);
    io_uring_sqe_set_data64(s, UD_CONN(OP_CANCEL_RECV, c));
    c->b.ur.cancel_sent = 1;
    /* Submit now rather than with the next wait: every byte the recv takes
     * before the cancel lands is read behind the paused application's back
     * (kept as the tail), while the point of pausing is to leave it in the
     * kernel and push back on the peer.  Pauses are rare; one enter is
     * cheap next to buffering a burst. */
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
    io_uring_sqe_set_data64(s, UD_CONN(OP_WRITABLE, c));
    c->b.ur.send_armed = 1;
    c->b.ur.inflight++;
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
    if (c->b.ur.send_armed || c->b.ur.connect_armed || (c->flags & GOEV__C_CLOSING))
        return;
    if (goev__outq_head_file(&c->out) && !send_file(c))
        return;
    size_t bytes;
    int n = goev__outq_iov(&c->out, c->out.inflight, c->b.ur.iov, 8, &bytes);
    if (n <= 0 || !bytes)
        return;
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s) {
        goev__on_error(c, -EBUSY);
        return;
    }
    if (n == 1) {
        io_uring_prep_send(s, c->fd, c->b.ur.iov[0].iov_base, c->b.ur.iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&c->b.ur.msg, 0, sizeof c->b.ur.msg);
        c->b.ur.msg.msg_iov = c->b.ur.iov;
        c->b.ur.msg.msg_iovlen = (size_t)n;
        io_uring_prep_sendmsg(s, c->fd, &c->b.ur.msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(s, UD_CONN(OP_SEND, c));
    c->out.inflight = bytes;
    c->b.ur.send_armed = 1;
    c->b.ur.inflight++;
}

static void ur_conn_close(struct goev__conn *c)
{
    if (!c->b.ur.close_sent) {
        c->b.ur.close_sent = 1;
        if (c->b.ur.inflight) {
            goev_poller *p = c->p;
            struct ur *u = UR(p);
            if (!u->started) {
                nop_out(u, UD_CONN(0, c), true);
                c->b.ur.inflight = 0;
                c->b.ur.recv_armed = c->b.ur.send_armed = 0;
                c->b.ur.poll_armed = c->b.ur.connect_armed = 0;
            } else {
                /* Every op of c is on c->fd, and the fd stays open (so its
                 * number cannot be reused) until the last CQE is in. */
                struct io_uring_sqe *s = get_sqe(p, u);
                if (s) {
                    io_uring_prep_cancel_fd(s, c->fd, IORING_ASYNC_CANCEL_ALL);
                    io_uring_sqe_set_data64(s, 0);
                } else if (!(c->flags & GOEV__C_KEEP_FD)) {
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
    c->b.ur.poll_want = (uint8_t)(events & (GOEV_READ | GOEV_WRITE));
    if (c->b.ur.poll_armed) {
        if (c->b.ur.poll_mask == c->b.ur.poll_want || c->b.ur.poll_cancel)
            return 0;
        if (!u->started) {
            if (nop_out(u, UD_CONN(OP_POLL, c), false)) {
                c->b.ur.poll_armed = 0;
                c->b.ur.inflight--;
            }
        } else {
            /* The poll's final CQE (-ECANCELED) re-arms with poll_want. */
            struct io_uring_sqe *s = get_sqe(p, u);
            if (!s)
                return -EBUSY;
            io_uring_prep_poll_remove(s, UD_CONN(OP_POLL, c));
            io_uring_sqe_set_data64(s, 0);
            c->b.ur.poll_cancel = 1;
            return 0;
        }
    }
    if (c->b.ur.poll_want && !c->b.ur.poll_armed)
        return arm_poll(c);
    return 0;
}

static int ur_connect(struct goev__conn *c, const struct sockaddr *sa, socklen_t len)
{
    if (len > sizeof c->b.ur.addr)
        return -EINVAL;
    goev_poller *p = c->p;
    struct io_uring_sqe *s = get_sqe(p, UR(p));
    if (!s)
        return -EBUSY;
    memcpy(&c->b.ur.addr, sa, len);
    io_uring_prep_connect(s, c->fd, (struct sockaddr *)&c->b.ur.addr, len);
    io_uring_sqe_set_data64(s, UD_CONN(OP_CONNECT, c));
    c->b.ur.connect_armed = 1;
    c->b.ur.inflight++;
    return 0;
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
    if (!u->started) {
        if (nop_out(u, UD_LISTENER(l), false))
            l->b.ur.armed = 0;
        return;
    }
    cancel_ud(p, u, UD_LISTENER(l));
    l->b.ur.cancel_sent = 1;
}

/* ---- wake-up ------------------------------------------------------------------ */

static void ur_wake(goev_poller *p)
{
    uint64_t one = 1;
    ssize_t rc = write(p->wake_fd, &one, sizeof one);
    (void)rc;   /* EAGAIN: the counter is already non-zero, the wake is due */
}

/* ---- completions ----------------------------------------------------------------- */

static void on_recv(goev_poller *p, struct ur *u, struct goev__conn *c, int res, unsigned flags)
{
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (res > 0 && !(c->flags & GOEV__C_CLOSING))
            goev__on_data(c, u->bufs + (size_t)bid * u->buf_size, (size_t)res);
        give_back(u, bid);
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    c->b.ur.recv_armed = 0;
    c->b.ur.cancel_sent = 0;
    c->b.ur.inflight--;
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    if (res == 0) {
        /* EOF can come in the same batch as data that arrived after a
         * pause (kept as the tail, not yet read by the application).
         * Reporting it now would close before the tail is seen; a fresh
         * recv after the resume finds the EOF again, behind the tail. */
        if (!(c->flags & GOEV__C_PAUSED))
            goev__on_eof(c);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EAGAIN) {
        goev__on_error(c, res);
    } else if (!(c->flags & (GOEV__C_PAUSED | GOEV__C_EOF | GOEV__C_CLOSE_WANT | GOEV__C_CLOSING))) {
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

static void on_send(goev_poller *p, struct goev__conn *c, int res)
{
    (void)p;
    size_t offered = c->out.inflight;
    c->out.inflight = 0;
    c->b.ur.send_armed = 0;
    c->b.ur.inflight--;
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
    c->b.ur.send_armed = 0;
    c->b.ur.inflight--;
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

static void on_poll(goev_poller *p, struct goev__conn *c, int res)
{
    (void)p;
    c->b.ur.poll_armed = 0;
    c->b.ur.poll_cancel = 0;
    c->b.ur.inflight--;
    if (c->flags & GOEV__C_CLOSING) {
        maybe_release(c);
        return;
    }
    if (res >= 0) {
        unsigned ev = ((res & POLLIN) ? GOEV_READ : 0) | ((res & POLLOUT) ? GOEV_WRITE : 0);
        ev &= c->b.ur.poll_want;
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
    if (c->b.ur.poll_want && !c->b.ur.poll_armed) {
        int rc = arm_poll(c);
        if (rc < 0)
            goev__on_error(c, rc);
    }
}

static void on_connect(goev_poller *p, struct goev__conn *c, int res)
{
    (void)p;
    c->b.ur.connect_armed = 0;
    c->b.ur.inflight--;
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
    if (!(flags & IORING_CQE_F_MORE)) {
        l->b.ur.armed = 0;
        l->b.ur.cancel_sent = 0;
    }
    if (u->stopping) {
        if (res >= 0) {
            close(res);
            GOEV__STAT_INC(p, sys_other);
        }
        return;
    }
    if (res >= 0)
        goev__on_accept(l, res);
    else if (res != -ECANCELED)
        goev__on_accept_error(l, res);  /* may stop us (back-off) */
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
    unsigned op = UD_OP(ud);
    unsigned flags = cqe->flags;
    int res = cqe->res;
    if (!(flags & IORING_CQE_F_MORE))
        u->live--;
    switch (op) {
    case OP_IGNORE:
        return;
    case OP_WAKE:
        on_wake(p, u, res);
        return;
    case OP_ACCEPT:
        on_accept(p, u, (struct goev__listener *)(uintptr_t)((ud & 0x00ffffffffffffffull) << 3), res,
                  flags);
        return;
    default:
        break;
    }
    struct goev__conn *c = goev__slot_conn(p, (uint32_t)(ud >> 32) & 0xffffffu);
    if (GOEV__UNLIKELY(!c || goev__gen(c) != (uint32_t)ud)) {
        /* Cannot happen while slots wait for every CQE; never touch it. */
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
        if (res == -EALREADY && c->b.ur.recv_armed && c->b.ur.cancel_sent &&
            (c->flags & GOEV__C_PAUSED) && !(c->flags & GOEV__C_CLOSING)) {
            c->b.ur.cancel_sent = 0;
            ur_conn_pause(c);
        }
        break;
    case OP_SEND:
        on_send(p, c, res);
        break;
    case OP_WRITABLE:
        on_writable(c, res);
        break;
    case OP_POLL:
        on_poll(p, c, res);
        break;
    case OP_CONNECT:
        on_connect(p, c, res);
        break;
    default:
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
    .probe = ur_probe,
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
    .wake = ur_wake,
    .wait = ur_wait,
};
