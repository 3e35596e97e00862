/* test_buf.c - size-class pool and output queue.
 *
 * The output queue is checked against a model byte string: whatever the
 * iovecs show, from any skip, must be exactly the model's bytes, in order,
 * after any mix of appends and consumes. */
#include "goev-internal.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define CHUNK_HDR offsetof(struct goev__chunk, data)

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9E3779B97F4A7C15ull + 1;
}

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Bytes on the pool's free lists, counted the hard way. */
static size_t pool_walk(const struct goev__pool *pl, size_t *blocks)
{
    size_t sum = 0, cnt = 0;
    for (unsigned c = 0; c < GOEV__POOL_CLASSES; c++)
        for (void *b = pl->free[c]; b; b = *(void **)b) {
            sum += (size_t)1 << (c + GOEV__POOL_MIN_SHIFT);
            cnt++;
        }
    if (blocks)
        *blocks = cnt;
    return sum;
}

/* ---- pool ----------------------------------------------------------------- */

Test(pool, size_classes)
{
    struct goev__pool pl;
    goev__pool_init(&pl, 64u << 20);
    const struct { size_t n, cap; } cases[] = {
        {0, 64}, {1, 64}, {63, 64}, {64, 64}, {65, 128}, {100, 128}, {128, 128},
        {129, 256}, {4095, 4096}, {4096, 4096}, {4097, 8192}, {16384, 16384},
        {(1u << 20) - 1, 1u << 20}, {1u << 20, 1u << 20},
        {(1u << 20) + 1, (1u << 20) + 1}, {3u << 20, 3u << 20},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t cap = 0;
        char *b = goev__pool_get(&pl, cases[i].n, &cap);
        cr_assert_not_null(b);
        cr_assert_eq(cap, cases[i].cap, "get(%zu): cap %zu, want %zu", cases[i].n, cap,
                     cases[i].cap);
        /* the whole capacity is usable (ASan/valgrind would complain) */
        memset(b, 0xa5, cap);
        goev__pool_put(&pl, b, cap);
    }
    goev__pool_fini(&pl);
}

Test(pool, reuse_same_class)
{
    struct goev__pool pl;
    goev__pool_init(&pl, 1u << 20);
    size_t cap1, cap2, cap3;
    void *a = goev__pool_get(&pl, 100, &cap1);
    void *b = goev__pool_get(&pl, 3000, &cap3);
    cr_assert_eq(cap1, 128);
    goev__pool_put(&pl, a, cap1);
    goev__pool_put(&pl, b, cap3);
    cr_assert_eq(pl.kept, 128 + 4096);
    cr_assert_eq(pool_walk(&pl, NULL), pl.kept);

    /* same class, different request: the freed block comes back */
    void *a2 = goev__pool_get(&pl, 120, &cap2);
    cr_assert_eq(a2, a);
    cr_assert_eq(cap2, 128);
    cr_assert_eq(pl.kept, 4096);
    /* another class must not hand out the 4 KiB block */
    void *c = goev__pool_get(&pl, 600, &cap2);
    cr_assert_neq(c, b);
    cr_assert_eq(cap2, 1024);
    cr_assert_eq(pl.kept, 4096);
    void *b2 = goev__pool_get(&pl, 2049, &cap3);
    cr_assert_eq(b2, b);
    cr_assert_eq(pl.kept, 0);

    /* LIFO: the most recently freed block of a class is reused first */
    void *x[4];
    size_t xc;
    for (int i = 0; i < 4; i++)
        x[i] = goev__pool_get(&pl, 64, &xc);
    for (int i = 0; i < 4; i++)
        goev__pool_put(&pl, x[i], 64);
    for (int i = 3; i >= 0; i--)
        cr_assert_eq(goev__pool_get(&pl, 1, &xc), x[i]);
    for (int i = 0; i < 4; i++)
        goev__pool_put(&pl, x[i], 64);
    goev__pool_put(&pl, a2, 128);
    goev__pool_put(&pl, b2, 4096);
    goev__pool_put(&pl, c, 1024);
    goev__pool_fini(&pl);
    cr_assert_eq(pl.kept, 0);
    cr_assert_eq(pool_walk(&pl, NULL), 0);
}

Test(pool, budget_respected)
{
    enum { N = 2000 };
    static void *blk[N];
    static size_t cap[N];
    const size_t budget = 100000;
    struct goev__pool pl;
    goev__pool_init(&pl, budget);
    rng_seed(3);
    size_t live = 0;
    for (int round = 0; round < 20; round++) {
        /* take a random mix of sizes, then give back in random order */
        for (int i = 0; i < N; i++) {
            size_t n = (size_t)1 << (rng() % 16);
            n += rng() % n;
            blk[i] = goev__pool_get(&pl, n, &cap[i]);
            cr_assert_not_null(blk[i]);
            cr_assert_geq(cap[i], n);
            live++;
            cr_assert_leq(pl.kept, budget);
        }
        for (int i = N - 1; i > 0; i--) {
            int j = (int)(rng() % (uint64_t)(i + 1));
            void *tb = blk[i]; blk[i] = blk[j]; blk[j] = tb;
            size_t tc = cap[i]; cap[i] = cap[j]; cap[j] = tc;
        }
        for (int i = 0; i < N; i++) {
            size_t before = pl.kept;
            goev__pool_put(&pl, blk[i], cap[i]);
            live--;
            cr_assert_leq(pl.kept, budget);
            /* a block is kept exactly when it fits the remaining budget */
            if (before + cap[i] <= budget)
                cr_assert_eq(pl.kept, before + cap[i]);
            else
                cr_assert_eq(pl.kept, before);
        }
        size_t blocks;
        cr_assert_eq(pool_walk(&pl, &blocks), pl.kept);
        cr_assert_gt(blocks, 0);
    }
    cr_assert_eq(live, 0);
    goev__pool_fini(&pl);
    cr_assert_eq(pl.kept, 0);
}

Test(pool, zero_budget_keeps_nothing)
{
    struct goev__pool pl;
    goev__pool_init(&pl, 0);
    for (int i = 0; i < 100; i++) {
        size_t cap;
        void *b = goev__pool_get(&pl, (size_t)i * 97, &cap);
        cr_assert_not_null(b);
        goev__pool_put(&pl, b, cap);
        cr_assert_eq(pl.kept, 0);
    }
    cr_assert_eq(pool_walk(&pl, NULL), 0);
    goev__pool_fini(&pl);
}

Test(pool, large_blocks_bypass_free_lists)
{
    struct goev__pool pl;
    goev__pool_init(&pl, 64u << 20);
    size_t cap;
    char *b = goev__pool_get(&pl, (2u << 20) + 5, &cap);
    cr_assert_not_null(b);
    cr_assert_eq(cap, (2u << 20) + 5);
    b[0] = 1;
    b[cap - 1] = 2;
    goev__pool_put(&pl, b, cap);
    cr_assert_eq(pl.kept, 0, "large blocks go back to malloc, not to a list");
    cr_assert_eq(pool_walk(&pl, NULL), 0);
    goev__pool_put(&pl, NULL, 64);  /* harmless */
    cr_assert_eq(pl.kept, 0);
    goev__pool_fini(&pl);
}

/* ---- output queue ----------------------------------------------------------- */

struct model {
    char *buf;
    size_t start, end, cap;
};

static void model_append(struct model *m, const char *d, size_t n)
{
    if (m->end + n > m->cap) {
        if (m->buf)
            memmove(m->buf, m->buf + m->start, m->end - m->start);
        m->end -= m->start;
        m->start = 0;
        if (m->end + n > m->cap) {
            m->cap = (m->end + n) * 2;
            m->buf = realloc(m->buf, m->cap);
            cr_assert_not_null(m->buf);
        }
    }
    memcpy(m->buf + m->end, d, n);
    m->end += n;
}

static void check_shape(const struct goev__outq *q)
{
    size_t sum = 0;
    const struct goev__chunk *last = NULL;
    for (const struct goev__chunk *ch = q->head; ch; ch = ch->next) {
        cr_assert_lt(ch->off, ch->len, "no empty chunk stays queued");
        cr_assert_leq(ch->len, ch->cap);
        sum += ch->len - ch->off;
        last = ch;
    }
    cr_assert_eq(last, q->tail);
    cr_assert_eq(sum, q->bytes);
    cr_assert_eq(q->head == NULL, q->bytes == 0);
}

/* iovecs from `skip` must show exactly model[start + skip, end). */
static void check_iov(const struct goev__outq *q, const struct model *m, size_t skip, int max)
{
    struct iovec iov[64];
    if (max > 64)
        max = 64;
    size_t bytes = (size_t)-1;
    int n = goev__outq_iov(q, skip, iov, max, &bytes);
    cr_assert_geq(n, 0);
    cr_assert_leq(n, max);
    size_t total = m->end - m->start;
    size_t sum = 0;
    for (int i = 0; i < n; i++) {
        cr_assert_gt(iov[i].iov_len, 0);
        cr_assert_leq(skip + sum + iov[i].iov_len, total);
        cr_assert(memcmp(iov[i].iov_base, m->buf + m->start + skip + sum, iov[i].iov_len) == 0,
                  "iov %d (skip %zu) differs from the model", i, skip);
        sum += iov[i].iov_len;
    }
    cr_assert_eq(sum, bytes);
    if (n < max)
        cr_assert_eq(skip + sum, skip < total ? total : skip,
                     "fewer iovecs than allowed but not everything shown");
}

static void fill_random(char *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = (char)(rng() >> 56);
}

static size_t random_len(void)
{
    uint64_t r = rng() % 100;
    if (r < 60)
        return 1 + rng() % 200;        /* small responses */
    if (r < 90)
        return 1 + rng() % 20000;      /* around one chunk */
    if (r < 98)
        return 1 + rng() % 200000;
    return (1u << 20) + rng() % (1u << 20);  /* past the largest class */
}

static void run_outq(uint64_t seed, size_t budget, int steps)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    struct model m = {0};
    static char src[(2u << 20) + 16];
    rng_seed(seed);
    goev__pool_init(&pl, budget);
    for (int s = 0; s < steps; s++) {
        uint64_t op = rng() % 10;
        if (op < 5) {
            size_t n = random_len();
            fill_random(src, n);
            cr_assert_eq(goev__outq_append(&pl, &q, src, n), 0);
            model_append(&m, src, n);
        } else if (op < 8) {
            size_t have = m.end - m.start;
            size_t n = have ? rng() % (have + 1) : 0;
            if (rng() % 4 == 0)
                n = have;  /* drain completely now and then */
            goev__outq_consume(&pl, &q, n);
            m.start += n;
        } else {
            size_t have = m.end - m.start;
            size_t skip = have ? rng() % (have + 1) : 0;
            if (rng() % 3 == 0)
                skip = 0;
            check_iov(&q, &m, skip, 1 + (int)(rng() % 8));
            check_iov(&q, &m, skip, 64);
        }
        cr_assert_eq(q.bytes, m.end - m.start, "seed %llu step %d", (unsigned long long)seed, s);
        check_shape(&q);
        cr_assert_leq(pl.kept, budget);
    }
    check_iov(&q, &m, 0, 64);
    goev__outq_clear(&pl, &q);
    cr_assert_null(q.head);
    cr_assert_null(q.tail);
    cr_assert_eq(q.bytes, 0);
    goev__pool_fini(&pl);
    free(m.buf);
}

Test(outq, random_against_model)
{
    for (uint64_t seed = 1; seed <= 40; seed++)
        run_outq(seed, seed % 2 ? 4u << 20 : 0, 400);
}

/* A small write to an empty queue takes a 256 B block (idle memory: a
 * burst of answers leaves small blocks in the pool, not 16 KiB ones); the
 * next write that overflows it moves the bytes to one full chunk, unless
 * the kernel is reading them (inflight), when a second chunk follows. */
Test(outq, small_first_chunk_grows)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    cr_assert_eq(goev__outq_append(&pl, &q, "0123456789", 10), 0);
    cr_assert_eq(q.head->cap + CHUNK_HDR, 256);
    char fill[300];
    memset(fill, 'f', sizeof fill);
    cr_assert_eq(goev__outq_append(&pl, &q, fill, sizeof fill), 0);
    cr_assert_eq(q.head, q.tail, "grown in place of a second chunk");
    cr_assert_eq(q.head->cap + CHUNK_HDR, 16384);
    cr_assert_eq(q.bytes, 310);
    cr_assert(memcmp(q.head->data, "0123456789", 10) == 0 && q.head->data[10] == 'f' &&
              q.head->data[309] == 'f');
    cr_assert_eq(pl.kept, 256, "the small block went back to the pool");
    goev__outq_clear(&pl, &q);

    /* in flight: the small chunk stays where the kernel reads it */
    cr_assert_eq(goev__outq_append(&pl, &q, "0123456789", 10), 0);
    struct goev__chunk *first = q.head;
    q.inflight = 10;
    cr_assert_eq(goev__outq_append(&pl, &q, fill, sizeof fill), 0);
    cr_assert_eq(q.head, first);
    cr_assert_neq(q.head, q.tail);
    cr_assert_eq(q.head->len, q.head->cap, "the small chunk filled first");
    struct iovec iov[4];
    size_t bytes;
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 4, &bytes), 2);
    cr_assert_eq(bytes, 310);
    q.inflight = 0;
    goev__outq_clear(&pl, &q);
    goev__pool_fini(&pl);
}

Test(outq, small_appends_share_a_chunk)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(goev__outq_append(&pl, &q, "HTTP/1.1 200 OK\r\n", 17), 0);
    cr_assert_eq(q.head, q.tail, "1700 bytes fit one default chunk");
    cr_assert_eq(q.bytes, 1700);
    cr_assert_eq(q.head->cap + CHUNK_HDR, 16384, "the small first chunk grew into a full one");
    struct iovec iov[4];
    size_t bytes;
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 4, &bytes), 1);
    cr_assert_eq(bytes, 1700);
    /* a big append fills the tail first, then one chunk for the rest */
    static char big[100000];
    memset(big, 'x', sizeof big);
    cr_assert_eq(goev__outq_append(&pl, &q, big, sizeof big), 0);
    cr_assert_eq(q.head->len, q.head->cap, "tail room used before a new chunk");
    cr_assert_neq(q.head, q.tail);
    cr_assert_eq(q.head->next, q.tail);
    cr_assert_eq(q.tail->len, 100000 - (q.head->cap - 1700));
    cr_assert_eq(q.tail->cap + CHUNK_HDR, 131072, "rest rounded up to its class");
    goev__outq_clear(&pl, &q);
    /* both chunks went back to the pool */
    cr_assert_eq(pl.kept, 256 + 16384 + 131072, "the small first chunk was kept too");
    cr_assert_eq(pool_walk(&pl, NULL), pl.kept);
    goev__pool_fini(&pl);
}

/* The io_uring backend keeps the first `inflight` bytes in the kernel:
 * appends must neither move nor overwrite them. */
Test(outq, append_keeps_inflight_bytes_in_place)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    struct model m = {0};
    static char src[300000];
    goev__pool_init(&pl, 8u << 20);
    rng_seed(99);
    for (int round = 0; round < 200; round++) {
        size_t n = random_len() % 50000 + 1;
        fill_random(src, n);
        cr_assert_eq(goev__outq_append(&pl, &q, src, n), 0);
        model_append(&m, src, n);

        /* hand a prefix to the "kernel" */
        q.inflight = rng() % (q.bytes + 1);
        struct iovec before[8], after[8];
        size_t bb, ab;
        int nb = goev__outq_iov(&q, 0, before, 8, &bb);
        char *copy = malloc(q.inflight + 1);
        cr_assert_not_null(copy);
        memcpy(copy, m.buf + m.start, q.inflight);

        for (int k = 0; k < 5; k++) {
            size_t an = random_len() % 40000 + 1;
            fill_random(src, an);
            cr_assert_eq(goev__outq_append(&pl, &q, src, an), 0);
            model_append(&m, src, an);
        }
        /* the bytes after the pinned prefix are what a new SEND would take */
        check_iov(&q, &m, q.inflight, 8);

        int na = goev__outq_iov(&q, 0, after, 8, &ab);
        cr_assert_geq(na, 1);
        /* every iovec covering the in-flight bytes starts where it did */
        size_t covered = 0;
        for (int i = 0; i < nb && covered < q.inflight; i++) {
            cr_assert_lt(i, na);
            cr_assert_eq(after[i].iov_base, before[i].iov_base,
                         "round %d: in-flight iovec %d moved", round, i);
            cr_assert_geq(after[i].iov_len, before[i].iov_len);
            size_t take = q.inflight - covered;
            if (take > before[i].iov_len)
                take = before[i].iov_len;
            cr_assert(memcmp(after[i].iov_base, copy + covered, take) == 0,
                      "round %d: in-flight bytes overwritten", round);
            covered += take;
        }
        free(copy);

        /* the kernel finishes: consume what was in flight, and maybe more */
        size_t done = q.inflight;
        q.inflight = 0;
        if (rng() % 2)
            done += rng() % (q.bytes - done + 1);
        goev__outq_consume(&pl, &q, done);
        m.start += done;
        check_shape(&q);
        cr_assert_eq(q.inflight, 0);
        check_iov(&q, &m, 0, 64);
    }
    goev__outq_clear(&pl, &q);
    goev__pool_fini(&pl);
    free(m.buf);
}

Test(outq, consume_leaves_inflight_to_caller)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    cr_assert_eq(goev__outq_append(&pl, &q, "abcdef", 6), 0);
    q.inflight = 4;
    goev__outq_consume(&pl, &q, 2);
    cr_assert_eq(q.inflight, 4);
    cr_assert_eq(q.bytes, 4);
    goev__outq_clear(&pl, &q);
    cr_assert_eq(q.inflight, 0);
    goev__pool_fini(&pl);
}

Test(outq, iov_skip_across_chunks)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 0);
    static char data[3 * 16384];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)(i * 7 + 3);
    /* three separate chunks: fill each exactly */
    size_t room = 16384 - CHUNK_HDR;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(goev__outq_append(&pl, &q, data + i * room, room), 0);
    cr_assert_eq(q.head->next->next, q.tail);
    goev__outq_consume(&pl, &q, 10);

    struct iovec iov[8];
    size_t bytes;
    /* skip to exactly the start of the second chunk */
    int n = goev__outq_iov(&q, room - 10, iov, 8, &bytes);
    cr_assert_eq(n, 2);
    cr_assert_eq(bytes, 2 * room);
    cr_assert_eq(iov[0].iov_base, q.head->next->data);
    cr_assert(memcmp(iov[0].iov_base, data + room, room) == 0);
    /* inside the second chunk, limited to one iovec */
    n = goev__outq_iov(&q, room + 5, iov, 1, &bytes);
    cr_assert_eq(n, 1);
    cr_assert_eq(bytes, room - 15);
    cr_assert(memcmp(iov[0].iov_base, data + 10 + room + 5, room - 15) == 0);
    /* skip everything, or more: nothing */
    cr_assert_eq(goev__outq_iov(&q, q.bytes, iov, 8, &bytes), 0);
    cr_assert_eq(bytes, 0);
    cr_assert_eq(goev__outq_iov(&q, q.bytes + 100, iov, 8, &bytes), 0);
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 0, &bytes), 0);
    cr_assert_eq(bytes, 0);
    /* empty queue */
    goev__outq_clear(&pl, &q);
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 8, &bytes), 0);
    cr_assert_eq(bytes, 0);
    /* zero-length append allocates nothing */
    cr_assert_eq(goev__outq_append(&pl, &q, NULL, 0), 0);
    cr_assert_null(q.head);
    goev__pool_fini(&pl);
}

Test(outq, consume_frees_emptied_chunks)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    static char data[40000];
    memset(data, 'z', sizeof data);
    cr_assert_eq(goev__outq_append(&pl, &q, data, 10000), 0);
    cr_assert_eq(goev__outq_append(&pl, &q, data, 30000), 0);
    cr_assert_neq(q.head, q.tail);
    size_t first = q.head->len;
    cr_assert_eq(pl.kept, 0);
    goev__outq_consume(&pl, &q, first - 1);
    cr_assert_eq(pl.kept, 0, "head still holds one byte");
    goev__outq_consume(&pl, &q, 1);
    cr_assert_eq(pl.kept, 16384, "emptied head chunk back in the pool");
    cr_assert_eq(q.head, q.tail);
    goev__outq_consume(&pl, &q, q.bytes);
    cr_assert_null(q.head);
    cr_assert_null(q.tail);
    cr_assert_eq(q.bytes, 0);
    cr_assert_eq(pool_walk(&pl, NULL), pl.kept);
    /* consuming more than queued is clamped, not a crash */
    goev__outq_consume(&pl, &q, 5);
    cr_assert_eq(q.bytes, 0);
    /* the queue is usable again after being emptied */
    cr_assert_eq(goev__outq_append(&pl, &q, "x", 1), 0);
    cr_assert_eq(q.bytes, 1);
    goev__outq_clear(&pl, &q);
    goev__pool_fini(&pl);
}

/* Append is all-or-nothing.  A tight address-space limit makes the second
 * 1 GiB chunk of a 2 GiB append fail after the first one succeeded, so the
 * rollback path really runs.  The limit lives only in this test's process
 * (Criterion forks one per test).  Sanitizers reserve terabytes of shadow
 * address space and valgrind manages the client's memory its own way, so
 * this cannot run under either. */
Test(outq, append_enomem_leaves_queue_unchanged)
{
    if (UNDER_SANITIZER || RUNNING_ON_VALGRIND)
        cr_skip_test("address-space limit unusable under sanitizers/valgrind");
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    cr_assert_eq(goev__outq_append(&pl, &q, "hello", 5), 0);
    struct goev__chunk *h = q.head;
    uint32_t len0 = h->len;

    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%ld", &pages), 1);
    fclose(f);
    rlim_t vm = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
    struct rlimit rl = {vm + (1536ull << 20), vm + (1536ull << 20)};
    cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);

    /* One 1 GiB chunk fits under the limit, two do not.  The source is
     * never read when allocation fails, so a small buffer stands in. */
    static char src[64];
    size_t len = (h->cap - h->len) + (2ull << 30);
    int rc = goev__outq_append(&pl, &q, src, len);
    cr_assert_eq(rc, -ENOMEM);
    cr_assert_eq(q.head, h);
    cr_assert_eq(q.tail, h);
    cr_assert_eq(h->len, len0, "tail room must not be filled on failure");
    cr_assert_eq(q.bytes, 5);
    cr_assert_null(h->next);
    /* and the rolled-back 1 GiB went back to malloc: it can be had again */
    rc = goev__outq_append(&pl, &q, src, sizeof src);
    cr_assert_eq(rc, 0);
    void *again = malloc(1u << 30);
    cr_assert_not_null(again, "the first chunk leaked on rollback");
    free(again);
    struct iovec iov[2];
    size_t bytes;
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 2, &bytes), 1);
    cr_assert_eq(bytes, 5 + sizeof src);
    cr_assert(memcmp(iov[0].iov_base, "hello", 5) == 0);
    goev__outq_clear(&pl, &q);
    goev__pool_fini(&pl);
}

/* File chunks: iovecs stop in front of them, goev__outq_head_file finds
 * them once the bytes before are consumed, consuming moves through the
 * range, and the queue closes the file when the range is done or cleared. */
static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

Test(outq, file_chunks_in_order)
{
    struct goev__pool pl;
    struct goev__outq q = {0};
    goev__pool_init(&pl, 1u << 20);
    int f1 = dup(0), f2 = dup(0);
    cr_assert(f1 >= 0 && f2 >= 0);
    cr_assert_eq(goev__outq_append(&pl, &q, "ab", 2), 0);
    cr_assert_eq(goev__outq_append_file(&pl, &q, f1, 100, 5000), 0);
    cr_assert_eq(goev__outq_append(&pl, &q, "cd", 2), 0);
    cr_assert_eq(goev__outq_append_file(&pl, &q, f2, 7, 3), 0);
    cr_assert_eq(q.bytes, 2 + 5000 + 2 + 3);
    struct iovec iov[8];
    size_t bytes;
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 8, &bytes), 1, "iovecs end at the file");
    cr_assert_eq(bytes, 2);
    cr_assert_null(goev__outq_head_file(&q), "bytes come first");
    goev__outq_consume(&pl, &q, 2);
    struct goev__fileref *f = goev__outq_head_file(&q);
    cr_assert_not_null(f);
    cr_assert_eq(f->fd, f1);
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 8, &bytes), 0, "no iovec while a file is first");
    goev__outq_consume(&pl, &q, 1000);
    cr_assert_eq(f->off, 1100);
    cr_assert_eq(f->left, 4000);
    cr_assert(fd_open(f1));
    /* The rest of the first file and one byte of "cd" in one step. */
    goev__outq_consume(&pl, &q, 4001);
    cr_assert(!fd_open(f1), "a consumed range's file is closed");
    cr_assert_null(goev__outq_head_file(&q));
    cr_assert_eq(goev__outq_iov(&q, 0, iov, 8, &bytes), 1);
    cr_assert_eq(bytes, 1);
    cr_assert_eq(*(char *)iov[0].iov_base, 'd');
    cr_assert_eq(q.bytes, 1 + 3);
    /* Memory appended after a file chunk goes into a chunk of its own. */
    cr_assert_eq(goev__outq_append(&pl, &q, "e", 1), 0);
    cr_assert_eq(q.bytes, 5);
    goev__outq_clear(&pl, &q);
    cr_assert(!fd_open(f2), "clearing the queue closes its files");
    cr_assert_null(q.head);
    goev__pool_fini(&pl);
}
