/* buf_pool.c - per-poller size-class allocator and connection output queues.
 *
 * The pool exists so that a server in steady state (requests in, responses
 * out) does not call malloc per request: an output chunk freed when the
 * kernel took its bytes is the next response's chunk.  A pool belongs to one
 * poller thread, so there are no locks.  The byte budget bounds what a burst
 * (many connections with big queues at once) leaves cached afterwards.
 *
 * Free blocks hold the free-list link in their own first bytes; the smallest
 * class (64 B) has room for it. */
#include "goev-internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_MIN ((size_t)1 << GOEV__POOL_MIN_SHIFT)
#define POOL_MAX ((size_t)1 << GOEV__POOL_MAX_SHIFT)

/* Output chunks: 16 KiB blocks by default, so that many small writes of a
 * pass share one chunk and one iovec; never more than 1 GiB of data in one
 * chunk, so offsets fit the uint32_t fields with room to spare.  A small
 * write to an empty queue (the usual answer to one request) gets a small
 * block: a burst of many connections answering at once then leaves small
 * blocks on the pool's free lists, not 16 KiB ones whose first page each
 * stays resident (idle memory per connection, issue 8).  A second write
 * that does not fit moves the bytes to a full-size chunk, so a pass's
 * writes still leave in one iovec. */
#define CHUNK_DEFAULT ((size_t)16 << 10)
#define CHUNK_SMALL ((size_t)256)
#define CHUNK_MAX_DATA ((size_t)1 << 30)
#define CHUNK_HDR offsetof(struct goev__chunk, data)

struct free_block {
    struct free_block *next;
};

/* Class index of a request of n bytes, n <= POOL_MAX. */
static inline unsigned size_class(size_t n)
{
    if (n <= POOL_MIN)
        return 0;
    /* ceil(log2(n)) - MIN_SHIFT; n >= 65 so n - 1 is non-zero */
    unsigned bits = (unsigned)(sizeof(unsigned long) * 8) - (unsigned)__builtin_clzl(n - 1);
    return bits - GOEV__POOL_MIN_SHIFT;
}

void goev__pool_init(struct goev__pool *pl, size_t budget)
{
    memset(pl->free, 0, sizeof pl->free);
    pl->kept = 0;
    pl->budget = budget;
}

void goev__pool_fini(struct goev__pool *pl)
{
    for (unsigned c = 0; c < GOEV__POOL_CLASSES; c++) {
        struct free_block *b = pl->free[c];
        while (b) {
            struct free_block *next = b->next;
            goev__free(b);
            b = next;
        }
        pl->free[c] = NULL;
    }
    pl->kept = 0;
}

void *goev__pool_get(struct goev__pool *pl, size_t n, size_t *cap)
{
    if (GOEV__UNLIKELY(n > POOL_MAX)) {
        void *p = goev__malloc(n);
        if (p)
            *cap = n;
        return p;
    }
    unsigned c = size_class(n);
    size_t sz = POOL_MIN << c;
    struct free_block *b = pl->free[c];
    if (b) {
        pl->free[c] = b->next;
        pl->kept -= sz;
    } else {
        b = goev__malloc(sz);
        if (!b)
            return NULL;
    }
    *cap = sz;
    return b;
}

/* cap must be what goev__pool_get gave for b.  Anything that is not a pool
 * class (a large block) goes back to malloc. */
void goev__pool_put(struct goev__pool *pl, void *b, size_t cap)
{
    if (!b)
        return;
    if (cap > POOL_MAX || cap < POOL_MIN || (cap & (cap - 1)) ||
        pl->kept + cap > pl->budget) {
        goev__free(b);
        return;
    }
    unsigned c = size_class(cap);
    struct free_block *fb = b;
    fb->next = pl->free[c];
    pl->free[c] = fb;
    pl->kept += cap;
}

/* ---- output queue -------------------------------------------------------- */

/* File chunks are blocks of the smallest class. */
#define FILE_CHUNK_BLOCK POOL_MIN
_Static_assert(CHUNK_HDR + sizeof(struct goev__fileref) <= FILE_CHUNK_BLOCK, "file chunk fits");

static void chunk_free(struct goev__pool *pl, struct goev__chunk *ch)
{
    struct goev__fileref *f = goev__chunk_file(ch);
    if (f) {
        close(f->fd);
        goev__pool_put(pl, ch, FILE_CHUNK_BLOCK);
        return;
    }
    goev__pool_put(pl, ch, CHUNK_HDR + (size_t)ch->cap);
}

static struct goev__chunk *chunk_new(struct goev__pool *pl, size_t want, bool small_ok)
{
    size_t blk = want + CHUNK_HDR;
    if (small_ok && blk <= CHUNK_SMALL)
        blk = CHUNK_SMALL;
    else if (blk < CHUNK_DEFAULT)
        blk = CHUNK_DEFAULT;
    size_t cap;
    struct goev__chunk *ch = goev__pool_get(pl, blk, &cap);
    if (!ch)
        return NULL;
    ch->next = NULL;
    ch->off = ch->len = 0;
    /* A class block of up to 1 MiB or a large one of want + header <= 1 GiB
     * + header: the data capacity fits in 32 bits either way. */
    ch->cap = (uint32_t)(cap - CHUNK_HDR);
    return ch;
}

int goev__outq_append(struct goev__pool *pl, struct goev__outq *q,
                      const void *data, size_t len)
{
    if (len == 0)
        return 0;
    const char *src = data;
    struct goev__chunk *t = q->tail;
    size_t room = t ? (size_t)(t->cap - t->len) : 0;    /* 0 after a file chunk */
    size_t into_tail = len < room ? len : room;
    size_t rest = len - into_tail;

    /* A small chunk alone in the queue, that the kernel is not reading
     * (nothing in flight), and that the bytes overflow: one full-size
     * chunk instead (if there is no memory for it, the path below tries
     * the usual way). */
    if (rest && t && t == q->head && t->cap && t->cap + CHUNK_HDR <= CHUNK_SMALL && !q->inflight &&
        len <= CHUNK_MAX_DATA - CHUNK_SMALL) {
        size_t keep = t->len - t->off;
        struct goev__chunk *ch = chunk_new(pl, keep + len, false);
        if (ch) {
            memcpy(ch->data, t->data + t->off, keep);
            memcpy(ch->data + keep, src, len);
            ch->len = (uint32_t)(keep + len);
            chunk_free(pl, t);
            q->head = q->tail = ch;
            q->bytes += len;
            return 0;
        }
    }

    /* Allocate everything before copying anything, so that a failure
     * leaves the queue as it was. */
    struct goev__chunk *first = NULL, *last = NULL;
    for (size_t left = rest; left > 0;) {
        size_t want = left < CHUNK_MAX_DATA ? left : CHUNK_MAX_DATA;
        struct goev__chunk *ch = chunk_new(pl, want, !t);
        if (GOEV__UNLIKELY(!ch)) {
            while (first) {
                struct goev__chunk *next = first->next;
                chunk_free(pl, first);
                first = next;
            }
            return -ENOMEM;
        }
        if (last)
            last->next = ch;
        else
            first = ch;
        last = ch;
        left -= want < ch->cap ? want : ch->cap;
    }

    /* Only bytes past t->len are written: the first q->inflight bytes that
     * the kernel may be reading are all before it. */
    if (into_tail) {
        memcpy(t->data + t->len, src, into_tail);
        t->len += (uint32_t)into_tail;
        src += into_tail;
    }
    for (struct goev__chunk *ch = first; ch; ch = ch->next) {
        size_t n = rest < ch->cap ? rest : ch->cap;
        memcpy(ch->data, src, n);
        ch->len = (uint32_t)n;
        src += n;
        rest -= n;
    }
    if (first) {
        if (t)
            t->next = first;
        else
            q->head = first;
        q->tail = last;
    }
    q->bytes += len;
    return 0;
}

int goev__outq_append_file(struct goev__pool *pl, struct goev__outq *q, int fd,
                           uint64_t off, uint64_t len)
{
    size_t cap;
    struct goev__chunk *ch = goev__pool_get(pl, FILE_CHUNK_BLOCK, &cap);
    if (!ch) {
        close(fd);
        return -ENOMEM;
    }
    ch->next = NULL;
    ch->off = ch->len = ch->cap = 0;
    struct goev__fileref *f = goev__chunk_file(ch);
    f->fd = fd;
    f->off = off;
    f->left = len;
    if (q->tail)
        q->tail->next = ch;
    else
        q->head = ch;
    q->tail = ch;
    q->bytes += len;
    return 0;
}

int goev__outq_iov(const struct goev__outq *q, size_t skip,
                   struct iovec *iov, int max, size_t *bytes)
{
    int cnt = 0;
    size_t sum = 0;
    for (const struct goev__chunk *ch = q->head; ch && ch->cap && cnt < max; ch = ch->next) {
        size_t avail = ch->len - ch->off;
        if (skip >= avail) {
            skip -= avail;
            continue;
        }
        iov[cnt].iov_base = (char *)ch->data + ch->off + skip;
        iov[cnt].iov_len = avail - skip;
        sum += avail - skip;
        skip = 0;
        cnt++;
    }
    if (bytes)
        *bytes = sum;
    return cnt;
}

/* q->inflight is the backend's business: the caller lowers it itself when
 * the bytes it consumes were the ones in flight. */
void goev__outq_consume(struct goev__pool *pl, struct goev__outq *q, size_t n)
{
    if (n > q->bytes)
        n = q->bytes;
    q->bytes -= n;
    while (n > 0) {
        struct goev__chunk *ch = q->head;
        struct goev__fileref *f = goev__chunk_file(ch);
        if (f) {
            if (n < f->left) {
                f->off += n;
                f->left -= n;
                return;
            }
            n -= (size_t)f->left;
            q->head = ch->next;
            if (!q->head)
                q->tail = NULL;
            chunk_free(pl, ch);
            continue;
        }
        size_t avail = ch->len - ch->off;
        if (n < avail) {
            ch->off += (uint32_t)n;
            return;
        }
        n -= avail;
        q->head = ch->next;
        if (!q->head)
            q->tail = NULL;
        chunk_free(pl, ch);
    }
}

void goev__outq_clear(struct goev__pool *pl, struct goev__outq *q)
{
    struct goev__chunk *ch = q->head;
    while (ch) {
        struct goev__chunk *next = ch->next;
        chunk_free(pl, ch);
        ch = next;
    }
    q->head = q->tail = NULL;
    q->bytes = 0;
    q->inflight = 0;
}
