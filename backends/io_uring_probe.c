/* io_uring_probe.c - setting io_uring rings up, and the probe that decides
 * whether io_uring can be used at all: ring setup flags, required features
 * and opcodes, and a self-test of multishot recv into a provided buffer.
 * The data path is in io_uring.c.
 *
 * Rings are created with the io_uring_setup system call here, so that the
 * fd is ours (the poller enables a disabled ring with it), and handed to
 * liburing with io_uring_queue_mmap. */
#include "io_uring_probe.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BGID GOEV__UR_BGID

/* ---- ring setup ---------------------------------------------------------- */

static const struct {
    unsigned flags;
    const char *name;
} ring_modes[] = {
    { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN" },
    { IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, "COOP_TASKRUN|TASKRUN_FLAG" },
    { 0, "no setup flags" },
};

/* Point SQ ring slot i at SQE i, through a mapping of the SQ ring of our
 * own (kernel ABI, io_uring_setup(2)): what io_uring_queue_init_params does
 * after its mmap and io_uring_queue_mmap does not. */
static int sq_array_init(int fd, const struct io_uring_params *prm)
{
    size_t len = prm->sq_off.array + prm->sq_entries * sizeof(unsigned);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_SQ_RING);
    if (m == MAP_FAILED)
        return -errno;
    unsigned *array = (unsigned *)(void *)((char *)m + prm->sq_off.array);
    for (unsigned i = 0; i < prm->sq_entries; i++)
        array[i] = i;
    munmap(m, len);
    return 0;
}

const char *goev__ur_mode_name(int mode)
{
    return ring_modes[mode].name;
}

int goev__ur_ring_create(struct io_uring *ring, unsigned entries, unsigned cq, unsigned extra,
                         int *mode, int *fd, unsigned *features)
{
    int rc = -EINVAL;
    for (int i = 0; i < (int)(sizeof ring_modes / sizeof ring_modes[0]); i++) {
        struct io_uring_params prm;
        memset(&prm, 0, sizeof prm);
        prm.flags = ring_modes[i].flags | extra | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        prm.cq_entries = cq;
        int rfd = (int)syscall(__NR_io_uring_setup, entries, &prm);
        if (rfd < 0) {
            rc = -errno;
            if (rc == -EINVAL)
                continue;
            return rc;
        }
        rc = sq_array_init(rfd, &prm);
        if (rc == 0)
            rc = io_uring_queue_mmap(rfd, &prm, ring);
        if (rc < 0) {
            close(rfd);
            return rc;
        }
        /* The other thing io_uring_queue_init_params does after its mmap:
         * liburing's timed waits read the features (to wait with EXT_ARG
         * rather than with a TIMEOUT op of their own). */
        ring->features = prm.features;
        *mode = i;
        *fd = rfd;
        *features = prm.features;
        return 0;
    }
    return rc;
}

/* liburing 2.3 has no io_uring_setup_buf_ring. */
int goev__ur_bufring_register(struct io_uring *ring, unsigned n, unsigned flags,
                              struct io_uring_buf_ring **out, size_t *bytes)
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
    /* The 16 bits after bgid: "pad" in liburing 2.3's header, "flags" in
     * later ones and in the kernel's. */
    uint16_t fl = (uint16_t)flags;
    memcpy((char *)&reg.bgid + sizeof reg.bgid, &fl, sizeof fl);
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

bool goev__ur_opcode_supported(struct io_uring *ring, int op)
{
    enum { PROBE_OPS = 256 };
    struct io_uring_probe *pr = goev__calloc(1, sizeof *pr + PROBE_OPS * sizeof(struct io_uring_probe_op));
    if (!pr)
        return false;
    bool yes = io_uring_register_probe(ring, pr, PROBE_OPS) == 0 && io_uring_opcode_supported(pr, op);
    goev__free(pr);
    return yes;
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
    int rc = goev__ur_bufring_register(ring, 2, 0, &br, &brb);
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

int goev__ur_probe(char *why, size_t len)
{
    struct io_uring ring;
    int mode, fd;
    unsigned features;
    int rc = goev__ur_ring_create(&ring, 8, 16, 0, &mode, &fd, &features);
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
        if (!(features & feats[i].bit)) {
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
        snprintf(why, len, "out of memory for the opcode probe");
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
        snprintf(why, len, "%s", goev__ur_mode_name(mode));
out:
    io_uring_queue_exit(&ring);
    return rc;
}

