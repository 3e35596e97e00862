/* io_uring_probe.h - what backends/io_uring.c and io_uring_probe.c share.
 * Not installed; included only by those two files. */
#ifndef GOEV_IO_URING_PROBE_H
#define GOEV_IO_URING_PROBE_H

#include "goev-internal.h"

#include <liburing.h>

/* Buffer group of the provided-buffer ring (there is one). */
#define GOEV__UR_BGID 0

/* Set up a ring with the best of the setup modes (SINGLE_ISSUER |
 * DEFER_TASKRUN, then COOP_TASKRUN | TASKRUN_FLAG, then none) that the
 * kernel takes, plus `extra` setup flags; CQ of cq entries.  *fd gets the
 * ring's fd (ours: io_uring_queue_exit closes it), *features the kernel's
 * IORING_FEAT_* bits, *mode an index for goev__ur_mode_name.  0 or a
 * negative errno; only EINVAL (a flag the kernel does not know) steps down. */
GOEV__HIDDEN int goev__ur_ring_create(struct io_uring *ring, unsigned entries, unsigned cq,
                                      unsigned extra, int *mode, int *fd, unsigned *features);
GOEV__HIDDEN const char *goev__ur_mode_name(int mode);

/* Incremental consumption of provided buffers (Linux 6.12): a receive takes
 * only the bytes it needs from a buffer, the next one goes on in the same
 * buffer, and a CQE says IORING_CQE_F_BUF_MORE while the kernel keeps the
 * rest.  liburing 2.3 predates both constants. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

/* Page-aligned buffer ring with n entries (a power of two), registered as
 * group GOEV__UR_BGID with reg flags (0 or IOU_PBUF_RING_INC: -EINVAL from
 * a kernel without it); *bytes gets its mapping's size (for munmap). */
GOEV__HIDDEN int goev__ur_bufring_register(struct io_uring *ring, unsigned n, unsigned flags,
                                           struct io_uring_buf_ring **out, size_t *bytes);

/* Does the kernel behind ring know opcode op (IORING_REGISTER_PROBE)?  False
 * also when it cannot tell. */
GOEV__HIDDEN bool goev__ur_opcode_supported(struct io_uring *ring, int op);

/* The backend's probe hook: can io_uring do what goev needs here? */
GOEV__HIDDEN int goev__ur_probe(char *why, size_t len);

#endif
