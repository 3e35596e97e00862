/* test_timer_heap.c - the 4-ary timer heap against a brute-force model.
 *
 * The model is just "which timers are in the heap": the minimum is found by
 * scanning.  After every operation the whole heap is checked: size, heap
 * order, every idx_ pointing back at its slot, idle timers at UINT32_MAX. */
#include "goev-internal.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9E3779B97F4A7C15ull + 1;
}

/* xorshift64*: cheap, good enough, same sequence everywhere */
static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_below(uint32_t n)
{
    return (uint32_t)(rng() % n);
}

struct model {
    goev_timer *t;
    bool *in;
    uint32_t count;
    uint32_t n;
};

static void model_init(struct model *m, uint32_t n)
{
    m->t = calloc(n, sizeof *m->t);
    m->in = calloc(n, sizeof *m->in);
    cr_assert(m->t && m->in);
    m->n = n;
    m->count = 0;
    for (uint32_t i = 0; i < n; i++) {
        m->t[i].idx_ = UINT32_MAX;
        m->t[i].user = &m->t[i];
    }
}

static void model_fini(struct model *m)
{
    free(m->t);
    free(m->in);
}

static void check_heap(const struct goev__heap *hp, const struct model *m, uint64_t seed,
                       uint32_t step)
{
    cr_assert_eq(hp->n, m->count, "seed %llu step %u: n %u, model %u",
                 (unsigned long long)seed, step, hp->n, m->count);
    cr_assert_leq(hp->n, hp->cap);
    for (uint32_t i = 0; i < hp->n; i++) {
        const goev_timer *t = hp->a[i].t;
        cr_assert_eq(hp->a[i].when, t->when_, "seed %llu step %u: slot %u key",
                     (unsigned long long)seed, step, i);
        cr_assert_eq(t->idx_, i, "seed %llu step %u: idx_ %u at slot %u",
                     (unsigned long long)seed, step, t->idx_, i);
        if (i > 0)
            cr_assert_leq(hp->a[(i - 1) / 4].when, t->when_,
                          "seed %llu step %u: heap order broken at %u",
                          (unsigned long long)seed, step, i);
    }
    for (uint32_t k = 0; k < m->n; k++) {
        const goev_timer *t = &m->t[k];
        if (m->in[k]) {
            cr_assert_lt(t->idx_, hp->n, "seed %llu step %u: timer %u lost",
                         (unsigned long long)seed, step, k);
            cr_assert_eq(hp->a[t->idx_].t, t);
        } else {
            cr_assert_eq(t->idx_, UINT32_MAX, "seed %llu step %u: idle timer %u has idx %u",
                         (unsigned long long)seed, step, k, t->idx_);
        }
    }
    if (m->count) {
        uint64_t mn = UINT64_MAX;
        for (uint32_t k = 0; k < m->n; k++)
            if (m->in[k] && m->t[k].when_ < mn)
                mn = m->t[k].when_;
        cr_assert_eq(goev__heap_top(hp)->when_, mn);
    } else {
        cr_assert_null(goev__heap_top(hp));
    }
}

/* keyspace small => many equal keys; large => mostly distinct */
static uint64_t random_when(uint64_t keyspace)
{
    return keyspace ? rng() % keyspace : rng();
}

static void run_random(uint64_t seed, uint32_t ntimers, uint32_t steps, uint64_t keyspace,
                       uint32_t initial_cap, uint32_t check_every)
{
    struct goev__heap hp;
    struct model m;
    rng_seed(seed);
    model_init(&m, ntimers);
    cr_assert_eq(goev__heap_init(&hp, initial_cap), 0);

    for (uint32_t s = 0; s < steps; s++) {
        uint32_t op = rng_below(100);
        uint32_t k = rng_below(ntimers);
        goev_timer *t = &m.t[k];
        if (op < 45) {
            /* schedule, or reschedule the way goev_timer_start does:
             * remove first, then push with the new key */
            if (m.in[k]) {
                goev__heap_remove(&hp, t);
                m.in[k] = false;
                m.count--;
            }
            t->when_ = random_when(keyspace);
            cr_assert_eq(goev__heap_push(&hp, t), 0);
            m.in[k] = true;
            m.count++;
        } else if (op < 75) {
            /* cancel an arbitrary timer, idle ones included */
            goev__heap_remove(&hp, t);
            if (m.in[k]) {
                m.in[k] = false;
                m.count--;
            }
        } else {
            /* expire: the top must be a minimum of the model */
            goev_timer *top = goev__heap_top(&hp);
            if (!m.count) {
                cr_assert_null(top);
            } else {
                cr_assert_not_null(top);
                uint32_t tk = (uint32_t)(top - m.t);
                cr_assert_lt(tk, ntimers);
                cr_assert(m.in[tk], "seed %llu: top is not in the model",
                          (unsigned long long)seed);
                for (uint32_t j = 0; j < ntimers; j++)
                    if (m.in[j])
                        cr_assert_geq(m.t[j].when_, top->when_,
                                      "seed %llu step %u: top %llu > timer %u %llu",
                                      (unsigned long long)seed, s,
                                      (unsigned long long)top->when_, j,
                                      (unsigned long long)m.t[j].when_);
                goev__heap_remove(&hp, top);
                m.in[tk] = false;
                m.count--;
            }
        }
        if (s % check_every == 0 || s + 1 == steps)
            check_heap(&hp, &m, seed, s);
    }

    /* drain: keys come out in non-decreasing order, each timer once */
    uint64_t prev = 0;
    while (m.count) {
        goev_timer *top = goev__heap_top(&hp);
        cr_assert_not_null(top);
        cr_assert_geq(top->when_, prev);
        prev = top->when_;
        uint32_t tk = (uint32_t)(top - m.t);
        cr_assert(m.in[tk]);
        goev__heap_remove(&hp, top);
        cr_assert_eq(top->idx_, UINT32_MAX);
        m.in[tk] = false;
        m.count--;
    }
    check_heap(&hp, &m, seed, steps);
    goev__heap_fini(&hp);
    model_fini(&m);
}

Test(timer_heap, empty)
{
    struct goev__heap hp;
    cr_assert_eq(goev__heap_init(&hp, 0), 0);
    cr_assert_null(goev__heap_top(&hp));
    goev_timer t;
    memset(&t, 0, sizeof t);
    t.idx_ = UINT32_MAX;
    goev__heap_remove(&hp, &t);  /* idle: no-op */
    cr_assert_eq(hp.n, 0);
    cr_assert_eq(goev__heap_push(&hp, &t), 0);
    cr_assert_eq(goev__heap_top(&hp), &t);
    cr_assert_eq(t.idx_, 0);
    goev__heap_remove(&hp, &t);
    cr_assert_eq(t.idx_, UINT32_MAX);
    cr_assert_null(goev__heap_top(&hp));
    goev__heap_fini(&hp);
}

Test(timer_heap, small_random_many_seeds)
{
    for (uint64_t seed = 1; seed <= 300; seed++)
        run_random(seed, 1 + (uint32_t)(seed % 40), 2000, seed % 3 ? 16 : 0, 0, 1);
}

Test(timer_heap, medium_random_equal_keys)
{
    for (uint64_t seed = 1000; seed < 1030; seed++)
        run_random(seed, 300, 20000, 4, 1, 1);
}

Test(timer_heap, large_random)
{
    /* thousands of timers; full checks are O(n), so not after every step */
    for (uint64_t seed = 5000; seed < 5006; seed++)
        run_random(seed, 5000, 60000, seed % 2 ? 1000 : 0, 1024, 97);
}

Test(timer_heap, extreme_keys)
{
    struct goev__heap hp;
    struct model m;
    model_init(&m, 9);
    cr_assert_eq(goev__heap_init(&hp, 2), 0);
    const uint64_t keys[9] = {UINT64_MAX, 0, UINT64_MAX - 1, 1, UINT64_MAX, 0, 42, 1ull << 63, 7};
    for (uint32_t i = 0; i < 9; i++) {
        m.t[i].when_ = keys[i];
        cr_assert_eq(goev__heap_push(&hp, &m.t[i]), 0);
        m.in[i] = true;
        m.count++;
        check_heap(&hp, &m, 0, i);
    }
    const uint64_t want[9] = {0, 0, 1, 7, 42, 1ull << 63, UINT64_MAX - 1, UINT64_MAX, UINT64_MAX};
    for (uint32_t i = 0; i < 9; i++) {
        goev_timer *top = goev__heap_top(&hp);
        cr_assert_eq(top->when_, want[i]);
        goev__heap_remove(&hp, top);
        m.in[top - m.t] = false;
        m.count--;
        check_heap(&hp, &m, 0, 100 + i);
    }
    goev__heap_fini(&hp);
    model_fini(&m);
}

/* A remove that needs a sift *up*: the element moved into the hole comes
 * from another subtree and is smaller than the hole's parent.  The heap is
 * laid out by hand to make that certain. */
Test(timer_heap, remove_sifts_up)
{
    enum { N = 21 };  /* root, 4 children, 16 grandchildren */
    struct goev__heap hp;
    struct model m;
    model_init(&m, N);
    cr_assert_eq(goev__heap_init(&hp, N), 0);
    uint64_t keys[N];
    keys[0] = 0;
    keys[1] = 100;
    keys[2] = keys[3] = keys[4] = 10;
    for (int i = 5; i < 9; i++)
        keys[i] = 200 + (uint64_t)i;
    for (int i = 9; i < N; i++)
        keys[i] = 20;
    keys[N - 1] = 15;
    for (uint32_t i = 0; i < N; i++) {
        m.t[i].when_ = keys[i];
        m.t[i].idx_ = i;
        hp.a[i].t = &m.t[i];
        hp.a[i].when = keys[i];
        m.in[i] = true;
    }
    hp.n = m.count = N;
    check_heap(&hp, &m, 0, 0);

    goev__heap_remove(&hp, &m.t[5]);
    m.in[5] = false;
    m.count--;
    check_heap(&hp, &m, 0, 1);
    cr_assert_eq(hp.a[1].t, &m.t[N - 1], "the moved element must rise to slot 1");
    cr_assert_eq(hp.a[5].t, &m.t[1]);
    goev__heap_fini(&hp);
    model_fini(&m);
}

/* A stale idx_ (a timer of another heap, or garbage) must not make remove
 * take out whatever sits at that slot. */
Test(timer_heap, remove_foreign_timer)
{
    struct goev__heap h1, h2;
    goev_timer a[3], b;
    memset(a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    cr_assert_eq(goev__heap_init(&h1, 4), 0);
    cr_assert_eq(goev__heap_init(&h2, 4), 0);
    for (int i = 0; i < 3; i++) {
        a[i].when_ = (uint64_t)i;
        a[i].idx_ = UINT32_MAX;
        cr_assert_eq(goev__heap_push(&h1, &a[i]), 0);
    }
    b.when_ = 5;
    b.idx_ = UINT32_MAX;
    cr_assert_eq(goev__heap_push(&h2, &b), 0);
    cr_assert_eq(b.idx_, 0);
    goev__heap_remove(&h1, &b);
    cr_assert_eq(h1.n, 3);
    cr_assert_eq(h1.a[0].t, &a[0]);
    cr_assert_eq(b.idx_, 0, "b must stay in its own heap");
    b.idx_ = 12345;
    goev__heap_remove(&h2, &b);
    cr_assert_eq(h2.n, 1);
    b.idx_ = 0;
    goev__heap_fini(&h1);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(a[i].idx_, UINT32_MAX, "fini leaves timers idle");
    goev__heap_fini(&h2);
    cr_assert_eq(b.idx_, UINT32_MAX);
}

Test(timer_heap, growth_keeps_contents)
{
    enum { N = 100000 };
    goev_timer *t = calloc(N, sizeof *t);
    cr_assert_not_null(t);
    struct goev__heap hp;
    cr_assert_eq(goev__heap_init(&hp, 1), 0);
    rng_seed(77);
    for (uint32_t i = 0; i < N; i++) {
        t[i].when_ = rng() % 100000;
        t[i].idx_ = UINT32_MAX;
        cr_assert_eq(goev__heap_push(&hp, &t[i]), 0);
    }
    cr_assert_eq(hp.n, N);
    cr_assert_geq(hp.cap, N);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(hp.a[t[i].idx_].t, &t[i]);
    uint64_t prev = 0;
    for (uint32_t i = 0; i < N; i++) {
        goev_timer *top = goev__heap_top(&hp);
        cr_assert_geq(top->when_, prev);
        prev = top->when_;
        goev__heap_remove(&hp, top);
    }
    cr_assert_eq(hp.n, 0);
    goev__heap_fini(&hp);
    free(t);
}

/* Pushing never lets a timer overtake an earlier one with the same key, so
 * with no removals in between the first scheduled is the first due. */
Test(timer_heap, push_does_not_overtake_equal_keys)
{
    enum { N = 200 };
    goev_timer t[N];
    memset(t, 0, sizeof t);
    struct goev__heap hp;
    cr_assert_eq(goev__heap_init(&hp, 0), 0);
    for (uint32_t i = 0; i < N; i++) {
        t[i].when_ = 7;
        t[i].idx_ = UINT32_MAX;
        cr_assert_eq(goev__heap_push(&hp, &t[i]), 0);
        cr_assert_eq(goev__heap_top(&hp), &t[0]);
    }
    goev__heap_fini(&hp);
}
