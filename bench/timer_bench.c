/* timer_bench.c - cost of the timer heap per operation.
 *
 *   bench/timer_bench [-n timers] [-r repetitions (3)] [-s seed] [-A]
 *
 * Phases, each over n timers (default one million):
 *   schedule  push n timers with random keys into an empty heap
 *   cancel    remove n/2 timers picked at random from the full heap
 *   expire    pop the whole (refilled) heap in order
 *   mixed     steady state of connection idle timers: the heap stays at n;
 *             90% of operations re-arm a random timer (cancel + schedule at
 *             now + timeout, i.e. the timer never fired), 10% expire the
 *             earliest one and schedule it again (a new connection)
 * They run for the library's heap (lib/timer_heap.c, called directly) and
 * for the baseline written below: an intrusive binary heap of libuv's shape
 * (heap-inl.h): left/right/parent pointers embedded in each timer, a heap
 * struct of min + count, insertion and removal by walking the path to the
 * last position, sifts by swapping nodes, ordered by (deadline, start
 * sequence).  Its timers are padded to the size of a goev_timer, so both
 * touch the same memory per timer.
 *
 * The api_ phases measure the same operations through the public API, on
 * a one-poller reactor's own thread: goev_timer_start of n timers (delays
 * up to one second), goev_timer_cancel of n/2, and the expiry of all n in
 * one loop pass (first on_timeout to last, callbacks included).  Their
 * deadlines fall on a thousand milliseconds, so the binary heap is run
 * again with those keys (bin_api_) for their ratio.  -A skips them.
 *
 * Random inputs are generated before the clock starts, heaps alternate
 * within every repetition, and every expiry checks that keys come out in
 * order.  Output: one `name=value` line per figure (ns per operation,
 * median of the repetitions), `bin_` prefix for the binary heap, ratio
 * lines (library / binary); lines starting with '#' are comments. */
#include "goev.h"
#include "goev-internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- baseline: intrusive binary heap of libuv's shape --------------------- */

struct bnode {
    struct bnode *left, *right, *parent;
};

struct bheap {
    struct bnode *min;
    uint32_t nelts;
};

struct btimer_core {
    struct bnode node;
    uint64_t when, seq;
};

/* same footprint as a goev_timer (the baseline's timers are not smaller) */
struct btimer {
    struct bnode node;
    uint64_t when, seq;
    char pad[sizeof(goev_timer) > sizeof(struct btimer_core)
                 ? sizeof(goev_timer) - sizeof(struct btimer_core) : 1];
};

#define BT(n) ((struct btimer *)(void *)(n))  /* node is the first member */

static inline int bless(const struct bnode *a, const struct bnode *b)
{
    const struct btimer *x = BT(a), *y = BT(b);
    return x->when < y->when || (x->when == y->when && x->seq < y->seq);
}

/* Exchange child with its parent, fixing every link around both. */
static void bswap(struct bheap *h, struct bnode *parent, struct bnode *child)
{
    struct bnode tmp = *parent, *sibling;
    *parent = *child;
    *child = tmp;
    parent->parent = child;
    if (child->left == child) {
        child->left = parent;
        sibling = child->right;
    } else {
        child->right = parent;
        sibling = child->left;
    }
    if (sibling)
        sibling->parent = child;
    if (parent->left)
        parent->left->parent = parent;
    if (parent->right)
        parent->right->parent = parent;
    if (!child->parent)
        h->min = child;
    else if (child->parent->left == parent)
        child->parent->left = child;
    else
        child->parent->right = child;
}

/* The link that holds (or will hold) position pos (1-based), and its
 * parent: the bits of pos below the top one spell the path from the root. */
static struct bnode **bpath(struct bheap *h, uint32_t pos, struct bnode **parent)
{
    struct bnode **link = &h->min;
    *parent = NULL;
    for (int b = 30 - __builtin_clz(pos); b >= 0; b--) {
        *parent = *link;
        link = (pos >> b) & 1 ? &(*parent)->right : &(*parent)->left;
    }
    return link;
}

static void binsert(struct bheap *h, struct bnode *n)
{
    struct bnode *parent;
    struct bnode **link = bpath(h, h->nelts + 1, &parent);
    n->left = n->right = NULL;
    n->parent = parent;
    *link = n;
    h->nelts++;
    while (n->parent && bless(n, n->parent))
        bswap(h, n->parent, n);
}

static void bremove(struct bheap *h, struct bnode *n)
{
    if (!h->nelts)
        return;
    struct bnode *parent;
    struct bnode **link = bpath(h, h->nelts, &parent);
    struct bnode *last = *link;
    *link = NULL;
    h->nelts--;
    if (last == n) {
        if (h->min == n)
            h->min = NULL;
        return;
    }
    /* last takes n's place */
    last->left = n->left;
    last->right = n->right;
    last->parent = n->parent;
    if (last->left)
        last->left->parent = last;
    if (last->right)
        last->right->parent = last;
    if (!n->parent)
        h->min = last;
    else if (n->parent->left == n)
        n->parent->left = last;
    else
        n->parent->right = last;
    for (;;) {
        struct bnode *s = last;
        if (last->left && bless(last->left, s))
            s = last->left;
        if (last->right && bless(last->right, s))
            s = last->right;
        if (s == last)
            break;
        bswap(h, last, s);
    }
    while (last->parent && bless(last, last->parent))
        bswap(h, last->parent, last);
}

/* ---- both heaps behind one set of calls -------------------------------------- */

/* The branch on `binary` is perfectly predicted within a phase and costs
 * the same for both. */
struct heap {
    int binary;
    struct goev__heap q;
    struct bheap b;
    uint64_t bseq;
    goev_timer *lt;     /* the library's timers */
    struct btimer *bt;  /* the baseline's */
};

static inline uint64_t h_when(const struct heap *h, uint32_t i)
{
    return h->binary ? h->bt[i].when : h->lt[i].when_;
}

static inline void h_set_when(struct heap *h, uint32_t i, uint64_t w)
{
    if (h->binary)
        h->bt[i].when = w;
    else
        h->lt[i].when_ = w;
}

static void die_oom(void)
{
    fprintf(stderr, "timer_bench: out of memory\n");
    exit(1);
}

static inline void h_push(struct heap *h, uint32_t i)
{
    if (h->binary) {
        h->bt[i].seq = h->bseq++;
        binsert(&h->b, &h->bt[i].node);
    } else if (goev__heap_push(&h->q, &h->lt[i]) < 0) {
        die_oom();
    }
}

static inline void h_remove(struct heap *h, uint32_t i)
{
    if (h->binary)
        bremove(&h->b, &h->bt[i].node);
    else
        goev__heap_remove(&h->q, &h->lt[i]);
}

/* Pop the earliest; returns its deadline. */
static inline uint64_t h_pop(struct heap *h, uint32_t *idx)
{
    if (h->binary) {
        struct btimer *t = BT(h->b.min);
        bremove(&h->b, &t->node);
        *idx = (uint32_t)(t - h->bt);
        return t->when;
    }
    goev_timer *t = goev__heap_pop(&h->q);
    *idx = (uint32_t)(t - h->lt);
    return t->when_;
}

static inline uint32_t h_size(const struct heap *h)
{
    return h->binary ? h->b.nelts : h->q.n;
}

static void h_init(struct heap *h, int binary, goev_timer *lt, struct btimer *bt, uint32_t cap)
{
    memset(h, 0, sizeof *h);
    h->binary = binary;
    h->lt = lt;
    h->bt = bt;
    if (!binary && goev__heap_init(&h->q, cap) < 0)
        die_oom();
}

static void h_fini(struct heap *h)
{
    if (!h->binary)
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

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        die_oom();
    return p;
}

/* deadlines of the api_ phases spread over this many milliseconds */
#define API_SPREAD 1000u

struct inputs {
    uint32_t n;
    uint64_t *keys;      /* schedule keys */
    uint64_t *api_keys;  /* keys % API_SPREAD: the api_ phases' delays */
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
    in->api_keys = xmalloc((size_t)n * sizeof *in->api_keys);
    for (uint32_t i = 0; i < n; i++) {
        in->keys[i] = rng() >> 16;
        in->api_keys[i] = in->keys[i] % API_SPREAD;
    }
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
    free(in->api_keys);
    free(in->victims);
    free(in->mix_pick);
    free(in->mix_jit);
}

/* ---- heap phases --------------------------------------------------------------- */

struct result {
    double schedule, cancel, expire, mixed;
};

static uint64_t sink;  /* keeps the loops from being optimised out */

static void out_of_order(const char *who)
{
    fprintf(stderr, "timer_bench: %s heap popped keys out of order\n", who);
    exit(1);
}

/* keys: the schedule keys; with `mixed` 0 only schedule/cancel/expire run */
/* h is empty on entry and on return.  It is kept from one repetition to
 * the next, as a poller keeps its heap: the first schedule includes the
 * heap's growth from its initial 1024, the later ones reuse the memory
 * (a fresh allocation each time would mostly measure page faults). */
static void run_once(const struct inputs *in, const uint64_t *keys, struct heap *hh, int mixed,
                     struct result *r)
{
    const uint32_t n = in->n;
    struct heap h = *hh;
    const char *who = h.binary ? "binary" : "library";
    goev_timer *lt = h.lt;
    for (uint32_t i = 0; i < n; i++) {
        h_set_when(&h, i, keys[i]);
        lt[i].idx_ = UINT32_MAX;
    }

    double t0 = now_ns();
    for (uint32_t i = 0; i < n; i++)
        h_push(&h, i);
    double t1 = now_ns();
    r->schedule = (t1 - t0) / n;

    const uint32_t nc = n / 2;
    t0 = now_ns();
    for (uint32_t i = 0; i < nc; i++)
        h_remove(&h, in->victims[i]);
    t1 = now_ns();
    r->cancel = (t1 - t0) / (nc ? nc : 1);

    for (uint32_t i = 0; i < nc; i++)
        h_push(&h, in->victims[i]);

    uint64_t prev = 0, acc = 0;
    int bad = 0;
    t0 = now_ns();
    while (h_size(&h)) {
        uint32_t idx;
        uint64_t w = h_pop(&h, &idx);
        bad |= w < prev;
        prev = w;
        acc += idx;
    }
    t1 = now_ns();
    if (bad)
        out_of_order(who);
    r->expire = (t1 - t0) / n;

    r->mixed = 0;
    if (mixed) {
        /* Steady state: every timer armed at now + timeout with keys that
         * grow with time, as idle timers do. */
        uint64_t now = 0;
        for (uint32_t i = 0; i < n; i++) {
            h_set_when(&h, i, now + IDLE_TIMEOUT + (uint64_t)i * IDLE_TIMEOUT / n);
            h_push(&h, i);
        }
        t0 = now_ns();
        for (uint32_t i = 0; i < in->mixed_ops; i++) {
            uint32_t k = in->mix_pick[i];
            if (k == UINT32_MAX)
                now = h_pop(&h, &k);
            else
                h_remove(&h, k);
            h_set_when(&h, k, now + IDLE_TIMEOUT + in->mix_jit[i]);
            h_push(&h, k);
        }
        t1 = now_ns();
        r->mixed = (t1 - t0) / in->mixed_ops;
        while (h_size(&h)) {
            uint32_t idx;
            h_pop(&h, &idx);
        }
    }
    acc += h_size(&h);
    sink += acc;
    *hh = h;
}

/* ---- the same through the public API ------------------------------------------- */

struct api_run {
    const struct inputs *in;
    goev_timer *t;
    goev_handler h;
    uint32_t fired;
    uint64_t last_when;
    int bad;
    double t_first, t_last;
    struct result r;
};

static int api_on_timeout(goev_handler *h, goev_timer *t)
{
    struct api_run *a = h->user;
    if (a->fired++ == 0)
        a->t_first = now_ns();
    a->bad |= t->when_ < a->last_when;
    a->last_when = t->when_;
    if (a->fired == a->in->n) {
        a->t_last = now_ns();
        goev_reactor_stop(goev_poller_reactor(goev_handler_poller(h)));
    }
    return 0;
}

static void api_on_close(goev_handler *h, int reason)
{
    (void)h;
    (void)reason;
}

static const struct goev_handler_ops api_ops = {
    .on_timeout = api_on_timeout,
    .on_close = api_on_close,
};

static void api_fail(const char *what, int rc)
{
    fprintf(stderr, "timer_bench: %s: %s\n", what, strerror(-rc));
    exit(1);
}

/* On the poller's thread: schedule, cancel, re-schedule, then wait until
 * every deadline has passed, so that the next pass expires all of them. */
static void api_post(goev_poller *p, void *arg)
{
    struct api_run *a = arg;
    const uint32_t n = a->in->n, nc = n / 2;
    const uint64_t *d = a->in->api_keys;
    int rc = 0;
    double t0 = now_ns();
    for (uint32_t i = 0; i < n; i++)
        rc |= goev_timer_start(p, &a->h, &a->t[i], d[i], 0);
    double t1 = now_ns();
    if (rc)
        api_fail("goev_timer_start", -ENOMEM);
    a->r.schedule = (t1 - t0) / n;
    t0 = now_ns();
    for (uint32_t i = 0; i < nc; i++)
        goev_timer_cancel(&a->t[a->in->victims[i]]);
    t1 = now_ns();
    a->r.cancel = (t1 - t0) / (nc ? nc : 1);
    /* back with their old deadlines (the clock of this pass has not moved) */
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t k = a->in->victims[i];
        rc |= goev_timer_start(p, &a->h, &a->t[k], d[k], 0);
    }
    if (rc)
        api_fail("goev_timer_start", -ENOMEM);
    struct timespec ts = {(API_SPREAD + 10) / 1000, (long)((API_SPREAD + 10) % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void run_api(const struct inputs *in, goev_timer *t, struct result *r)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 1;
    goev_reactor *re;
    int rc = goev_reactor_new(&re, &o);
    if (rc < 0)
        api_fail("goev_reactor_new", rc);
    static struct api_run a;
    memset(&a, 0, sizeof a);
    a.in = in;
    a.t = t;
    goev_handler_init(&a.h, &api_ops);
    a.h.user = &a;
    for (uint32_t i = 0; i < in->n; i++)
        goev_timer_init(&t[i]);
    goev_poller *p = goev_reactor_poller(re, 0);
    if ((rc = goev_post(p, api_post, &a)) < 0 || (rc = goev_reactor_run(re)) < 0)
        api_fail("reactor", rc);
    goev_reactor_free(re);
    if (a.fired != in->n) {
        fprintf(stderr, "timer_bench: %u of %u timers fired\n", a.fired, in->n);
        exit(1);
    }
    if (a.bad)
        out_of_order("api");
    *r = a.r;
    r->expire = (a.t_last - a.t_first) / (in->n > 1 ? in->n - 1 : 1);
    r->mixed = 0;
}

/* ---- main ------------------------------------------------------------------------- */

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
    fprintf(stderr, "usage: timer_bench [-n timers] [-r repetitions] [-s seed] [-A]\n");
    exit(2);
}

enum { LIB, BIN, API, BIN_API, NSETS };

int main(int argc, char **argv)
{
    unsigned long n = 1000000, reps = 3, seed = 1;
    int api = 1, opt;
    while ((opt = getopt(argc, argv, "n:r:s:Ah")) != -1) {
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
        case 'A': api = 0; break;
        default: usage();
        }
    }
    if (n < 2 || n > (1ul << 28) || reps < 1 || reps > 1000)
        usage();

    struct inputs in;
    make_inputs(&in, (uint32_t)n, seed);
    goev_timer *lt = xmalloc(n * sizeof *lt);
    struct btimer *bt = xmalloc(n * sizeof *bt);
    memset(lt, 0, n * sizeof *lt);
    memset(bt, 0, n * sizeof *bt);

    struct heap heaps[2];
    h_init(&heaps[LIB], 0, lt, bt, 1024);
    h_init(&heaps[BIN], 1, lt, bt, 0);
    double *v[NSETS][4];
    for (int b = 0; b < NSETS; b++)
        for (int k = 0; k < 4; k++)
            v[b][k] = xmalloc(reps * sizeof(double));
    /* alternate the heaps (and their order) so that drift - frequency,
     * other load - hits all of them */
    for (unsigned long r = 0; r < reps; r++)
        for (int j = 0; j < NSETS; j++) {
            int b = r % 2 ? NSETS - 1 - j : j;
            struct result res;
            if (b == API) {
                if (!api)
                    continue;
                run_api(&in, lt, &res);
            } else if (b == BIN_API) {
                if (!api)
                    continue;
                run_once(&in, in.api_keys, &heaps[BIN], 0, &res);
            } else {
                run_once(&in, in.keys, &heaps[b], 1, &res);
            }
            v[b][0][r] = res.schedule;
            v[b][1][r] = res.cancel;
            v[b][2][r] = res.expire;
            v[b][3][r] = res.mixed;
        }

    static const char *names[4] = {"schedule", "cancel", "expire", "mixed"};
    double med[NSETS][4];
    for (int b = 0; b < (api ? NSETS : 2); b++)
        for (int k = 0; k < 4; k++)
            med[b][k] = median(v[b][k], (int)reps);

    printf("# timer_bench: n=%lu reps=%lu seed=%lu, ns/op, median\n", n, reps, seed);
    printf("# op          4-ary   binary  4-ary/bin      api  bin(api keys)  api/bin\n");
    for (int k = 0; k < 4; k++) {
        printf("# %-9s %8.1f %8.1f %8.2f", names[k], med[LIB][k], med[BIN][k],
               med[LIB][k] / med[BIN][k]);
        if (api && k < 3)
            printf(" %8.1f %8.1f %12.2f", med[API][k], med[BIN_API][k],
                   med[API][k] / med[BIN_API][k]);
        printf("\n");
    }
    printf("timers=%lu\n", n);
    for (int k = 0; k < 4; k++)
        printf("%s_ns=%.1f\n", names[k], med[LIB][k]);
    for (int k = 0; k < 4; k++)
        printf("bin_%s_ns=%.1f\n", names[k], med[BIN][k]);
    for (int k = 0; k < 4; k++)
        printf("ratio_%s=%.3f\n", names[k], med[LIB][k] / med[BIN][k]);
    if (api) {
        for (int k = 0; k < 3; k++)
            printf("api_%s_ns=%.1f\n", names[k], med[API][k]);
        for (int k = 0; k < 3; k++)
            printf("bin_api_%s_ns=%.1f\n", names[k], med[BIN_API][k]);
        for (int k = 0; k < 3; k++)
            printf("ratio_api_%s=%.3f\n", names[k], med[API][k] / med[BIN_API][k]);
    }
    if (sink == 42)
        fputc('\n', stderr);

    for (int b = 0; b < NSETS; b++)
        for (int k = 0; k < 4; k++)
            free(v[b][k]);
    h_fini(&heaps[LIB]);
    h_fini(&heaps[BIN]);
    free(lt);
    free(bt);
    free_inputs(&in);
    return 0;
}
