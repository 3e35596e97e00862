/* timer_heap.c - 4-ary min-heap of timers, keyed by (when_, seq_).
 *
 * Why 4-ary: a pop sifts down log4(n) levels instead of log2(n), and the four
 * children of a node are adjacent, so fewer, cheaper levels beat the extra
 * compares.  bench/timer_bench measures it against a binary heap.
 *
 * Layout: each slot is 16 bytes, {deadline, timer}, so a sift compares the
 * deadlines in the array and touches a timer only to store its new index
 * (and to read seq_ when two deadlines are equal).  The array is 64-byte
 * aligned and slot 0 is the last slot of a line, so the children of any
 * node, 4i+1 .. 4i+4, fill exactly one line: a level costs one line.
 *
 * Each timer carries its own position (idx_), which makes cancel O(log n)
 * instead of the mark-and-skip of the Go original: a cancelled idle timer
 * leaves no garbage behind to skew the next timeout or hold memory.
 *
 * Sifts move a hole rather than swapping.  Removal sifts the hole down to
 * the bottom along the smallest children (no compare against the element
 * that will fill it, which came from the bottom and almost always belongs
 * there), then lets the last element rise from there (usually not at all).
 *
 * Ties: no two keys are equal.  Each push stamps the timer with the heap's
 * next sequence number, and timers with one deadline compare by it, so they
 * come out in the order they were pushed (started), as libuv promises too.
 * The sequence is 64 bits: it does not wrap.  A pushed timer has the largest
 * sequence of all, so its rise compares deadlines only. */
#include "goev-internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define D 4
#define PARENT(i) (((i) - 1) / D)
#define FIRST_CHILD(i) ((i) * D + 1)

#define LINE 64
/* slots before slot 0 in its line: 4i+1 starts a line */
#define OFFSET (LINE / sizeof(struct goev__heap_ent) - 1)

/* Smallest capacity worth allocating; keeps the first pushes from
 * reallocating one slot at a time. */
#define HEAP_MIN_CAP 16

typedef struct goev__heap_ent ent;

/* Does a come out before b? */
static inline bool before(ent a, ent b)
{
    return a.when < b.when || (a.when == b.when && a.t->seq_ < b.t->seq_);
}

/* From a block's start to the first address OFFSET slots into a line. */
static inline size_t slot_skip(const char *m)
{
    return (OFFSET * sizeof(ent) - (uintptr_t)m) & (LINE - 1);
}

/* Heaps larger than this (slots) are assumed not to fit the cache. */
#define PREFETCH_MIN 16384

/* before(), with the deadlines compared first and seq_ read only on a tie:
 * written so that the common case compiles to a compare and a set */
static inline uint32_t lt(ent a, ent b)
{
    if (GOEV__UNLIKELY(a.when == b.when))
        return a.t->seq_ < b.t->seq_;
    return a.when < b.when;
}

/* Memory for cap slots, line-aligned as described above; the new block's
 * start is stored in *mem. */
static ent *alloc_slots(uint32_t cap, void **mem)
{
    char *m = goev__malloc((size_t)cap * sizeof(ent) + LINE);
    if (!m)
        return NULL;
    *mem = m;
    return (ent *)(void *)(m + slot_skip(m));
}

int goev__heap_init(struct goev__heap *hp, uint32_t cap)
{
    hp->a = NULL;
    hp->mem = NULL;
    hp->n = 0;
    hp->cap = 0;
    hp->seq = 0;
    if (cap == 0)
        return 0;
    hp->a = alloc_slots(cap, &hp->mem);
    if (!hp->a)
        return -ENOMEM;
    hp->cap = cap;
    return 0;
}

/* Timers still in the heap belong to their handlers: only forget them. */
void goev__heap_fini(struct goev__heap *hp)
{
    for (uint32_t i = 0; i < hp->n; i++)
        hp->a[i].t->idx_ = UINT32_MAX;
    goev__free(hp->mem);
    hp->a = NULL;
    hp->mem = NULL;
    hp->n = hp->cap = 0;
}

/* e rises from the hole at i; by_when: e is the newest (largest seq), so
 * equal deadlines never let it pass. */
static inline __attribute__((always_inline)) void sift_up(ent *a, uint32_t i, ent e, bool by_when)
{
    while (i > 0) {
        uint32_t p = PARENT(i);
        ent pe = a[p];
        if (by_when ? !(e.when < pe.when) : !before(e, pe))
            break;
        a[i] = pe;
        pe.t->idx_ = i;
        i = p;
    }
    a[i] = e;
    e.t->idx_ = i;
}

/* mv sinks from the hole at i: the hole moves down along the smallest
 * children while one of them comes out before mv; n: slots in use, not
 * counting mv.  Returns where mv belongs (not stored). */
static inline __attribute__((always_inline)) uint32_t hole_down(ent *a, uint32_t n, uint32_t i, ent mv)
{
    for (;;) {
        uint32_t c = FIRST_CHILD(i);
        if (c >= n)
            break;
        const ent *g = &a[c];
        uint32_t m = c;
        uint64_t mw = g[0].when;
        if (GOEV__LIKELY(c + D <= n)) {
            /* children on the next level but one: in a heap too big for
             * the cache, start the line needed after this one */
            if (n > PREFETCH_MIN && FIRST_CHILD(c) < n) {
                __builtin_prefetch(&a[FIRST_CHILD(c)]);
                __builtin_prefetch(&a[FIRST_CHILD(c + 1)]);
                __builtin_prefetch(&a[FIRST_CHILD(c + 2)]);
                __builtin_prefetch(&a[FIRST_CHILD(c + 3)]);
            }
            /* the full fan, the common case inside a big heap: unrolled
             * without bounds checks */
            if (lt(g[1], a[m])) m = c + 1;
            if (lt(g[2], a[m])) m = c + 2;
            if (lt(g[3], a[m])) m = c + 3;
        } else {
            for (uint32_t k = c + 1; k < n; k++)
                if (lt(a[k], a[m]))
                    m = k;
        }
        (void)mw;
        if (!lt(a[m], mv))
            break;
        a[i] = a[m];
        a[i].t->idx_ = i;
        i = m;
    }
    return i;
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
    /* realloc (not a fresh block): the contents come along, at their old
     * distance from the block's start; the new block may need them at
     * another one to keep the children's lines aligned. */
    size_t old_skip = hp->mem ? (size_t)((char *)hp->a - (char *)hp->mem) : 0;
    char *m = goev__realloc(hp->mem, (size_t)ncap * sizeof(ent) + LINE);
    if (!m)
        return -ENOMEM;
    ent *na = (ent *)(void *)(m + slot_skip(m));
    if ((char *)na != m + old_skip && hp->n)
        memmove(na, m + old_skip, (size_t)hp->n * sizeof *na);
    hp->a = na;
    hp->mem = m;
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
    sift_up(hp->a, hp->n++, (ent){t->when_, t}, true);
    return 0;
}

/* Fill the hole at i (its timer already gone) with the last slot. */
static inline void fill(struct goev__heap *hp, uint32_t i)
{
    uint32_t last = --hp->n;
    if (i == last)
        return;
    ent *a = hp->a;
    ent mv = a[last];
    /* The element moved into the hole came from the bottom, so it usually
     * belongs further down; it can only need to go up when the hole was
     * in a different subtree. */
    if (i > 0 && before(mv, a[PARENT(i)]))
        sift_up(a, i, mv, false);
    else
    {
        i = hole_down(a, last, i, mv);
        a[i] = mv;
        mv.t->idx_ = i;
    }
}

/* Removing a timer that is not in this heap is a no-op, so that cancelling
 * an idle timer needs no check at the call site. */
void goev__heap_remove(struct goev__heap *hp, goev_timer *t)
{
    uint32_t i = t->idx_;
    if (i >= hp->n || hp->a[i].t != t)
        return;
    t->idx_ = UINT32_MAX;
    fill(hp, i);
}

goev_timer *goev__heap_pop(struct goev__heap *hp)
{
    goev_timer *t = hp->a[0].t;
    t->idx_ = UINT32_MAX;
    fill(hp, 0);
    return t;
}
