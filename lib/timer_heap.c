/* timer_heap.c - 4-ary min-heap of timers, keyed by (when_, seq_).
 *
 * Why 4-ary: a pop sifts down log4(n) levels instead of log2(n), and the four
 * children of a node are adjacent pointers (one cache line for the array
 * part), so fewer, cheaper levels beat the extra compares.  bench/timer_bench
 * measures it against a binary heap.
 *
 * Each timer carries its own position (idx_), which makes cancel O(log n)
 * instead of the mark-and-skip of the Go original: a cancelled idle timer
 * leaves no garbage behind to skew the next timeout or hold memory.
 *
 * Sifts move a hole rather than swapping: each level costs one load and one
 * store of the array plus one idx_ store, and the moving timer is written
 * once, at the end.
 *
 * Ties: no two keys are equal.  Each push stamps the timer with the heap's
 * next sequence number, and timers with one deadline compare by it, so they
 * come out in the order they were pushed (started), as libuv promises too.
 * The sequence is 64 bits: it does not wrap. */
#include "goev-internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#define D 4
#define PARENT(i) (((i) - 1) / D)
#define FIRST_CHILD(i) ((i) * D + 1)

/* Smallest capacity worth allocating; keeps the first pushes from
 * reallocating one slot at a time. */
#define HEAP_MIN_CAP 16

/* Does a come out before b? */
static inline bool before(const goev_timer *a, const goev_timer *b)
{
    return a->when_ < b->when_ || (a->when_ == b->when_ && a->seq_ < b->seq_);
}

int goev__heap_init(struct goev__heap *hp, uint32_t cap)
{
    hp->a = NULL;
    hp->n = 0;
    hp->cap = 0;
    hp->seq = 0;
    if (cap == 0)
        return 0;
    hp->a = goev__malloc((size_t)cap * sizeof *hp->a);
    if (!hp->a)
        return -ENOMEM;
    hp->cap = cap;
    return 0;
}

/* Timers still in the heap belong to their handlers: only forget them. */
void goev__heap_fini(struct goev__heap *hp)
{
    for (uint32_t i = 0; i < hp->n; i++)
        hp->a[i]->idx_ = UINT32_MAX;
    goev__free(hp->a);
    hp->a = NULL;
    hp->n = hp->cap = 0;
}

static void sift_up(goev_timer **a, uint32_t i, goev_timer *t)
{
    while (i > 0) {
        uint32_t p = PARENT(i);
        goev_timer *pt = a[p];
        if (!before(t, pt))
            break;
        a[i] = pt;
        pt->idx_ = i;
        i = p;
    }
    a[i] = t;
    t->idx_ = i;
}

static void sift_down(goev_timer **a, uint32_t n, uint32_t i, goev_timer *t)
{
    for (;;) {
        uint32_t c = FIRST_CHILD(i);
        if (c >= n)
            break;
        /* Pick the smallest of up to four children.  The full-fan case
         * is the common one inside a big heap: unroll it without bounds
         * checks. */
        goev_timer *mt = a[c];
        uint32_t m = c;
        if (GOEV__LIKELY(c + D <= n)) {
            if (before(a[c + 1], mt)) { m = c + 1; mt = a[m]; }
            if (before(a[c + 2], mt)) { m = c + 2; mt = a[m]; }
            if (before(a[c + 3], mt)) { m = c + 3; mt = a[m]; }
        } else {
            for (uint32_t k = c + 1; k < n; k++)
                if (before(a[k], mt)) { m = k; mt = a[m]; }
        }
        if (!before(mt, t))
            break;
        a[i] = mt;
        mt->idx_ = i;
        i = m;
    }
    a[i] = t;
    t->idx_ = i;
}

static int grow(struct goev__heap *hp)
{
    uint32_t ncap;
    if (hp->cap == 0)
        ncap = HEAP_MIN_CAP;
    else if (hp->cap >= UINT32_MAX / 2)
        ncap = UINT32_MAX - 1;  /* UINT32_MAX itself means "not in a heap" */
    else
        ncap = hp->cap * 2;
    if (ncap <= hp->cap)
        return -ENOMEM;
    goev_timer **na = goev__realloc(hp->a, (size_t)ncap * sizeof *na);
    if (!na)
        return -ENOMEM;
    hp->a = na;
    hp->cap = ncap;
    return 0;
}

/* t must not be in a heap already (the caller removes it first). */
int goev__heap_push(struct goev__heap *hp, goev_timer *t)
{
    if (GOEV__UNLIKELY(hp->n == hp->cap)) {
        int rc = grow(hp);
        if (rc < 0)
            return rc;
    }
    t->seq_ = hp->seq++;
    sift_up(hp->a, hp->n++, t);
    return 0;
}

/* Removing a timer that is not in this heap is a no-op, so that cancelling
 * an idle timer needs no check at the call site. */
void goev__heap_remove(struct goev__heap *hp, goev_timer *t)
{
    uint32_t i = t->idx_;
    if (i >= hp->n || hp->a[i] != t)
        return;
    t->idx_ = UINT32_MAX;
    uint32_t last = --hp->n;
    if (i == last)
        return;
    goev_timer *mv = hp->a[last];
    /* The element moved into the hole came from the bottom, so it usually
     * belongs further down; it can only need to go up when the hole was
     * in a different subtree. */
    if (i > 0 && before(mv, hp->a[PARENT(i)]))
        sift_up(hp->a, i, mv);
    else
        sift_down(hp->a, last, i, mv);
}
