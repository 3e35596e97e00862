/* timer_bench.c - cost of the timer heap per operation.
 *
 *   bench/timer_bench [-n timers] [-r repetitions] [-s seed]
 *
 * Phases, each over n timers (default one million):
 *   schedule  push n timers with random keys into an empty heap
 *   cancel    remove n/2 timers picked at random from the full heap
 *   expire    pop the whole (refilled) heap in order
 *   mixed     steady state of connection idle timers: the heap stays at n;
 *             90% of operations re-arm a random timer (cancel + schedule at
 *             now + timeout, i.e. the timer never fired), 10% expire the
 *             earliest one and schedule it again (a new connection)
 * Each phase runs for the library's 4-ary heap and for a binary heap
 * written here the same way (hole-based sifts, index in the timer), so the
 * difference is the fan-out alone.  Random inputs are generated before the
 * clock starts.  Output: one `name=value` line per figure (ns per operation,
 * median of the repetitions), `bin_` prefix for the binary heap, and a ratio
 * line; lines starting with '#' are comments. */
#include "goev-internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- binary heap, for comparison only ------------------------------------ */

struct bin_heap {
    goev_timer **a;
    uint32_t n, cap;
};

static void bin_sift_up(goev_timer **a, uint32_t i, goev_timer *t)
{
    const uint64_t w = t->when_;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        goev_timer *pt = a[p];
        if (pt->when_ <= w)
            break;
        a[i] = pt;
        pt->idx_ = i;
        i = p;
    }
    a[i] = t;
    t->idx_ = i;
}

static void bin_sift_down(goev_timer **a, uint32_t n, uint32_t i, goev_timer *t)
{
    const uint64_t w = t->when_;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && a[c + 1]->when_ < a[c]->when_)
            c++;
        if (a[c]->when_ >= w)
            break;
        a[i] = a[c];
        a[i]->idx_ = i;
        i = c;
    }
    a[i] = t;
    t->idx_ = i;
}

static int bin_push(struct bin_heap *hp, goev_timer *t)
{
    if (hp->n == hp->cap) {
        uint32_t ncap = hp->cap ? hp->cap * 2 : 16;
        goev_timer **na = realloc(hp->a, (size_t)ncap * sizeof *na);
        if (!na)
            return -ENOMEM;
        hp->a = na;
        hp->cap = ncap;
    }
    bin_sift_up(hp->a, hp->n++, t);
    return 0;
}

static void bin_remove(struct bin_heap *hp, goev_timer *t)
{
    uint32_t i = t->idx_;
    if (i >= hp->n || hp->a[i] != t)
        return;
    t->idx_ = UINT32_MAX;
    uint32_t last = --hp->n;
    if (i == last)
        return;
    goev_timer *mv = hp->a[last];
    if (i > 0 && mv->when_ < hp->a[(i - 1) / 2]->when_)
        bin_sift_up(hp->a, i, mv);
    else
        bin_sift_down(hp->a, last, i, mv);
}

/* Both heaps behind one set of calls; the branch is perfectly predicted
 * within a phase and costs the same for both. */
struct heap {
    int binary;
    struct goev__heap q;
    struct bin_heap b;
};

static inline int h_push(struct heap *h, goev_timer *t)
{
    return h->binary ? bin_push(&h->b, t) : goev__heap_push(&h->q, t);
}

static inline void h_remove(struct heap *h, goev_timer *t)
{
    if (h->binary)
        bin_remove(&h->b, t);
    else
        goev__heap_remove(&h->q, t);
}

static inline goev_timer *h_top(const struct heap *h)
{
    if (h->binary)
        return h->b.n ? h->b.a[0] : NULL;
    return goev__heap_top(&h->q);
}

static inline uint32_t h_size(const struct heap *h)
{
    return h->binary ? h->b.n : h->q.n;
}

static void h_init(struct heap *h, int binary, uint32_t cap)
{
    memset(h, 0, sizeof *h);
    h->binary = binary;
    if (binary) {
        h->b.a = malloc((size_t)cap * sizeof *h->b.a);
        h->b.cap = h->b.a ? cap : 0;
    } else if (goev__heap_init(&h->q, cap) < 0) {
        fprintf(stderr, "timer_bench: out of memory\n");
        exit(1);
    }
}

static void h_fini(struct heap *h)
{
    if (h->binary)
        free(h->b.a);
    else
        goev__heap_fini(&h->q);
}

/* ---- inputs ---------------------------------------------------------------- */

static uint64_t rng_state = 1;

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die_oom(void)
{
    fprintf(stderr, "timer_bench: out of memory\n");
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        die_oom();
    return p;
}

struct inputs {
    uint32_t n;
    uint64_t *keys;      /* schedule keys */
    uint32_t *victims;   /* n/2 distinct timers to cancel, random order */
    uint32_t mixed_ops;
    uint32_t *mix_pick;  /* timer to re-arm, or UINT32_MAX to expire */
    uint32_t *mix_jit;   /* jitter added to the idle timeout */
};

/* idle timeout of the mixed phase, in heap time units (ms) */
#define IDLE_TIMEOUT 30000u

static void make_inputs(struct inputs *in, uint32_t n, uint64_t seed)
{
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    in->n = n;
    in->keys = xmalloc((size_t)n * sizeof *in->keys);
    for (uint32_t i = 0; i < n; i++)
        in->keys[i] = rng() >> 16;
    uint32_t *perm = xmalloc((size_t)n * sizeof *perm);
    for (uint32_t i = 0; i < n; i++)
        perm[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rng() % (i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    in->victims = perm;  /* first n/2 used */
    in->mixed_ops = n * 2;
    in->mix_pick = xmalloc((size_t)in->mixed_ops * sizeof *in->mix_pick);
    in->mix_jit = xmalloc((size_t)in->mixed_ops * sizeof *in->mix_jit);
    for (uint32_t i = 0; i < in->mixed_ops; i++) {
        in->mix_pick[i] = rng() % 10 == 0 ? UINT32_MAX : (uint32_t)(rng() % n);
        in->mix_jit[i] = (uint32_t)(rng() % 1000);
    }
}

static void free_inputs(struct inputs *in)
{
    free(in->keys);
    free(in->victims);
    free(in->mix_pick);
    free(in->mix_jit);
}

/* ---- phases ------------------------------------------------------------------ */

struct result {
    double schedule, cancel, expire, mixed;
};

static uint64_t sink;  /* keeps the expire loop from being optimised out */

static void run_once(const struct inputs *in, int binary, goev_timer *t, struct result *r)
{
    const uint32_t n = in->n;
    struct heap h;
    /* start small so that schedule includes the doubling, as in real use */
    h_init(&h, binary, 1024);
    for (uint32_t i = 0; i < n; i++) {
        t[i].when_ = in->keys[i];
        t[i].idx_ = UINT32_MAX;
    }

    double t0 = now_ns();
    for (uint32_t i = 0; i < n; i++)
        if (h_push(&h, &t[i]) < 0)
            die_oom();
    double t1 = now_ns();
    r->schedule = (t1 - t0) / n;

    const uint32_t nc = n / 2;
    t0 = now_ns();
    for (uint32_t i = 0; i < nc; i++)
        h_remove(&h, &t[in->victims[i]]);
    t1 = now_ns();
    r->cancel = (t1 - t0) / (nc ? nc : 1);

    for (uint32_t i = 0; i < nc; i++)
        if (h_push(&h, &t[in->victims[i]]) < 0)
            die_oom();

    uint64_t acc = 0;
    t0 = now_ns();
    goev_timer *top;
    while ((top = h_top(&h)) != NULL) {
        acc += top->when_;
        h_remove(&h, top);
    }
    t1 = now_ns();
    r->expire = (t1 - t0) / n;

    /* Steady state: every timer armed at now + timeout with keys that grow
     * with time, as idle timers do. */
    uint64_t now = 0;
    for (uint32_t i = 0; i < n; i++) {
        t[i].when_ = now + IDLE_TIMEOUT + (uint64_t)i * IDLE_TIMEOUT / n;
        if (h_push(&h, &t[i]) < 0)
            die_oom();
    }
    t0 = now_ns();
    for (uint32_t i = 0; i < in->mixed_ops; i++) {
        uint32_t k = in->mix_pick[i];
        goev_timer *x;
        if (k == UINT32_MAX) {
            x = h_top(&h);
            now = x->when_;
        } else {
            x = &t[k];
        }
        h_remove(&h, x);
        x->when_ = now + IDLE_TIMEOUT + in->mix_jit[i];
        if (h_push(&h, x) < 0)
            die_oom();
    }
    t1 = now_ns();
    r->mixed = (t1 - t0) / in->mixed_ops;
    acc += h_size(&h);
    sink += acc;
    h_fini(&h);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr, "usage: timer_bench [-n timers] [-r repetitions] [-s seed]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long n = 1000000, reps = 5, seed = 1;
    int opt;
    while ((opt = getopt(argc, argv, "n:r:s:h")) != -1) {
        char *end;
        unsigned long v = 0;
        if (opt == 'n' || opt == 'r' || opt == 's') {
            errno = 0;
            v = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg)
                usage();
        }
        switch (opt) {
        case 'n': n = v; break;
        case 'r': reps = v; break;
        case 's': seed = v; break;
        default: usage();
        }
    }
    if (n < 2 || n > (1ul << 30) || reps < 1 || reps > 1000)
        usage();

    struct inputs in;
    make_inputs(&in, (uint32_t)n, seed);
    goev_timer *t = xmalloc(n * sizeof *t);
    memset(t, 0, n * sizeof *t);

    double *v[2][4];
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 4; k++)
            v[b][k] = xmalloc(reps * sizeof(double));
    /* alternate the heaps so that drift (frequency, other load) hits both */
    for (unsigned long r = 0; r < reps; r++)
        for (int b = 0; b < 2; b++) {
            struct result res;
            run_once(&in, b, t, &res);
            v[b][0][r] = res.schedule;
            v[b][1][r] = res.cancel;
            v[b][2][r] = res.expire;
            v[b][3][r] = res.mixed;
        }

    static const char *names[4] = {"schedule", "cancel", "expire", "mixed"};
    double med[2][4];
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 4; k++)
            med[b][k] = median(v[b][k], (int)reps);

    printf("# timer_bench: n=%lu reps=%lu seed=%lu, ns/op, median\n", n, reps, seed);
    printf("# op         4-ary    binary   4-ary/binary\n");
    for (int k = 0; k < 4; k++)
        printf("# %-9s %8.1f %8.1f %8.2f\n", names[k], med[0][k], med[1][k],
               med[0][k] / med[1][k]);
    printf("timers=%lu\n", n);
    for (int k = 0; k < 4; k++)
        printf("%s_ns=%.1f\n", names[k], med[0][k]);
    for (int k = 0; k < 4; k++)
        printf("bin_%s_ns=%.1f\n", names[k], med[1][k]);
    for (int k = 0; k < 4; k++)
        printf("ratio_%s=%.3f\n", names[k], med[0][k] / med[1][k]);
    if (sink == 42)
        fputc('\n', stderr);

    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 4; k++)
            free(v[b][k]);
    free(t);
    free_inputs(&in);
    return 0;
}
