/* test_async.c - the functions callable from any thread: goev_async_write,
 * goev_post, goev_broadcast, poller-local slots, and stopping the reactor
 * from another thread or a signal handler. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

/* ---- server whose connections announce an index ------------------------ */

#define MAXC 64

struct ac {
    goev_handler h;
    struct asrv *s;
    int idx;                /* from the client's hello, -1 until then */
    int closes, reason;
};

struct asrv {
    goev_reactor *r;
    goev_acceptor *a;
    int port;
    pthread_mutex_t mu;
    struct ac *conns[MAXC];
    int nconns;
    goev_conn_id ids[MAXC];     /* by client index */
    int ready;                  /* hellos seen */
    int opens, closes, canceled, other_reason;
    int wrong_thread;
};

static int ac_on_open(goev_handler *h)
{
    struct ac *c = (struct ac *)h;
    if (goev_current_poller() != goev_handler_poller(h))
        TU_INC(&c->s->wrong_thread);
    TU_CHECK(goev_handler_id(h) != 0, "connection without an id");
    TU_INC(&c->s->opens);
    return 0;
}

/* The client's first line is "hello <k>\n"; later bytes are ignored. */
static ssize_t ac_on_read(goev_handler *h, const char *d, size_t n)
{
    struct ac *c = (struct ac *)h;
    if (c->idx >= 0)
        return (ssize_t)n;
    const char *nl = memchr(d, '\n', n);
    if (!nl)
        return 0;
    int k = -1;
    if (sscanf(d, "hello %d", &k) != 1 || k < 0 || k >= MAXC) {
        TU_CHECK(0, "bad hello");
        return -EPROTO;
    }
    c->idx = k;
    TU_STORE(&c->s->ids[k], goev_handler_id(h));
    TU_INC(&c->s->ready);
    return (ssize_t)n;
}

static void ac_on_close(goev_handler *h, int reason)
{
    struct ac *c = (struct ac *)h;
    TU_CHECK(c->closes == 0, "on_close twice");
    c->reason = reason;
    TU_INC(&c->closes);
    if (reason == -ECANCELED)
        TU_INC(&c->s->canceled);
    else if (reason != 0)
        TU_STORE(&c->s->other_reason, reason);
    TU_INC(&c->s->closes);
}

static const struct goev_handler_ops ac_ops = {
    .on_open = ac_on_open, .on_read = ac_on_read, .on_close = ac_on_close,
};

static goev_handler *ac_new(goev_poller *p, void *arg)
{
    struct asrv *s = arg;
    struct ac *c = calloc(1, sizeof *c);
    goev_handler_init(&c->h, &ac_ops);
    c->s = s;
    c->idx = -1;
    pthread_mutex_lock(&s->mu);
    if (s->nconns < MAXC) {
        s->conns[s->nconns++] = c;
    } else {
        free(c);
        c = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return c ? &c->h : NULL;
}

static void asrv_init(struct asrv *s, int pollers)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->r = tu_reactor_new(pollers);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", NULL, ac_new, s);
    cr_assert_eq(rc, 0, "%s", strerror(-rc));
    s->port = goev_acceptor_port(s->a);
}

static void asrv_fini(struct asrv *s)
{
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    cr_assert_eq(s->opens, s->closes, "%d opened, %d closed", s->opens, s->closes);
    cr_assert_eq(s->wrong_thread, 0);
    for (int i = 0; i < s->nconns; i++)
        free(s->conns[i]);
    pthread_mutex_destroy(&s->mu);
}

/* Connect client k and wait until the server knows its id. */
static int client_hello(struct asrv *s, int k)
{
    int fd = tu_connect_tcp4(s->port);
    cr_assert(fd >= 0);
    char msg[32];
    int n = snprintf(msg, sizeof msg, "hello %d\n", k);
    cr_assert(tu_write_all(fd, msg, (size_t)n) == 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s->ids[k]) != 0, 5000), "client %d never registered", k);
    return fd;
}

/* ---- async writes from many threads ------------------------------------- */

#define WTHREADS 8
#define NCLIENTS 4
#define RECORDS 1500

/* Record: u16 len | u8 thread | u8 conn | u32 seq | payload[len] derived from
 * (thread, conn, seq), so a torn or misdelivered record is detected. */
struct rec_hdr {
    uint16_t len;
    uint8_t thread, conn;
    uint32_t seq;
};

static uint64_t rec_seed(unsigned t, unsigned c, uint32_t seq)
{
    return ((uint64_t)t << 48) ^ ((uint64_t)c << 40) ^ seq;
}

struct writer {
    pthread_t th;
    struct asrv *s;
    unsigned idx;
    int errors, last_err;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct tu_rng g;
    tu_rng_seed(&g, w->idx);
    char buf[sizeof(struct rec_hdr) + 300];
    for (uint32_t seq = 0; seq < RECORDS; seq++) {
        for (unsigned c = 0; c < NCLIENTS; c++) {
            struct rec_hdr hd = {.len = (uint16_t)tu_rng_range(&g, 0, 300), .thread = (uint8_t)w->idx,
                                 .conn = (uint8_t)c, .seq = seq};
            memcpy(buf, &hd, sizeof hd);
            tu_stream_fill(rec_seed(w->idx, c, seq), 0, buf + sizeof hd, hd.len);
            int rc = goev_async_write(w->s->r, TU_LOAD(&w->s->ids[c]), buf, sizeof hd + hd.len);
            if (rc) {
                w->errors++;
                w->last_err = rc;
            }
        }
    }
    return NULL;
}

struct reader {
    pthread_t th;
    int fd;
    unsigned conn;
    uint32_t next[WTHREADS];
    int bad;
    char why[160];
};

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    char payload[300], want[300];
    uint64_t left = (uint64_t)WTHREADS * RECORDS;
    while (left) {
        struct rec_hdr hd;
        int rc = tu_read_exact(rd->fd, &hd, sizeof hd);
        if (rc == 0 && hd.len <= sizeof payload)
            rc = tu_read_exact(rd->fd, payload, hd.len);
        if (rc) {
            snprintf(rd->why, sizeof rd->why, "read: %s with %llu records missing",
                     strerror(-rc), (unsigned long long)left);
            rd->bad = 1;
            return NULL;
        }
        if (hd.len > sizeof payload || hd.thread >= WTHREADS || hd.conn != rd->conn) {
            snprintf(rd->why, sizeof rd->why, "torn or misdelivered record (len %u thread %u "
                     "conn %u on conn %u)", hd.len, hd.thread, hd.conn, rd->conn);
            rd->bad = 1;
            return NULL;
        }
        if (hd.seq != rd->next[hd.thread]) {
            snprintf(rd->why, sizeof rd->why, "conn %u thread %u: record %u after %u", rd->conn,
                     hd.thread, hd.seq, rd->next[hd.thread]);
            rd->bad = 1;
            return NULL;
        }
        tu_stream_fill(rec_seed(hd.thread, hd.conn, hd.seq), 0, want, hd.len);
        if (memcmp(want, payload, hd.len) != 0) {
            snprintf(rd->why, sizeof rd->why, "conn %u thread %u record %u corrupt", rd->conn,
                     hd.thread, hd.seq);
            rd->bad = 1;
            return NULL;
        }
        rd->next[hd.thread]++;
        left--;
    }
    return NULL;
}

Test(async, write_from_many_threads, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct asrv s;
    asrv_init(&s, 2);
    tu_reactor_start(s.r);
    struct reader rd[NCLIENTS];
    for (int k = 0; k < NCLIENTS; k++) {
        memset(&rd[k], 0, sizeof rd[k]);
        rd[k].fd = client_hello(&s, k);
        rd[k].conn = (unsigned)k;
    }
    for (int k = 0; k < NCLIENTS; k++)
        cr_assert(pthread_create(&rd[k].th, NULL, reader_main, &rd[k]) == 0);
    struct writer w[WTHREADS];
    for (unsigned i = 0; i < WTHREADS; i++) {
        w[i] = (struct writer){.s = &s, .idx = i};
        cr_assert(pthread_create(&w[i].th, NULL, writer_main, &w[i]) == 0);
    }
    for (int i = 0; i < WTHREADS; i++)
        pthread_join(w[i].th, NULL);
    for (int k = 0; k < NCLIENTS; k++)
        pthread_join(rd[k].th, NULL);
    for (int i = 0; i < WTHREADS; i++)
        cr_assert_eq(w[i].errors, 0, "writer %d: %d failed async writes (last %s)", i,
                     w[i].errors, strerror(-w[i].last_err));
    for (int k = 0; k < NCLIENTS; k++) {
        cr_assert_eq(rd[k].bad, 0, "%s", rd[k].why);
        for (int t = 0; t < WTHREADS; t++)
            cr_assert_eq(rd[k].next[t], RECORDS);
    }
    struct goev_stats st;
    cr_assert(goev_stats_get(s.r, -1, &st) == 0);
    cr_assert_eq(st.async_dropped, 0);
    for (int k = 0; k < NCLIENTS; k++)
        close(rd[k].fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == NCLIENTS, 5000));
    tu_reactor_stop_wait(s.r);
    asrv_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

struct hammer {
    pthread_t th;
    goev_reactor *r;
    goev_conn_id id;
    int stop;
    uint64_t ok, notconn, other;
};

static void *hammer_main(void *arg)
{
    struct hammer *hm = arg;
    static const char rec[16] = "0123456789abcde";
    for (unsigned n = 0; !TU_LOAD(&hm->stop); n++) {
        /* Throttled: the client does not read, so everything queues. */
        if ((n & 15) == 0)
            usleep(100);
        int rc = goev_async_write(hm->r, hm->id, rec, sizeof rec);
        if (rc == 0)
            hm->ok++;
        else if (rc == -ENOTCONN)
            hm->notconn++;
        else
            hm->other++;
    }
    return NULL;
}

Test(async, write_to_closed_connection, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct asrv s;
    asrv_init(&s, 1);
    tu_reactor_start(s.r);
    static const char msg[] = "stale";
    /* Malformed ids are refused outright. */
    cr_assert_eq(goev_async_write(s.r, 0, msg, 5), -EINVAL);
    cr_assert_eq(goev_async_write(s.r, ((goev_conn_id)200 << 56) | 1, msg, 5), -EINVAL,
                 "id naming poller 200 of 1");

    int fd = client_hello(&s, 0);
    goev_conn_id id = s.ids[0];
    /* Writes race with the close: each one is delivered, refused or
     * dropped-and-counted, never a crash (CI runs this under ASan). */
    struct hammer hm = {.r = s.r, .id = id};
    cr_assert(pthread_create(&hm.th, NULL, hammer_main, &hm) == 0);
    tu_sleep_ms(30);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    tu_sleep_ms(30);
    TU_STORE(&hm.stop, 1);
    pthread_join(hm.th, NULL);
    cr_assert_eq(hm.other, 0, "async_write returned something other than 0/-ENOTCONN");
    cr_assert(hm.ok > 0, "no async write succeeded while the connection was open");

    /* Once the close is known, a write is refused or counted as dropped. */
    struct goev_stats st0, st1;
    goev_stats_get(s.r, -1, &st0);
    int accepted = 0;
    for (int i = 0; i < 100; i++) {
        int rc = goev_async_write(s.r, id, msg, 5);
        cr_assert(rc == 0 || rc == -ENOTCONN, "write to closed id: %d", rc);
        accepted += rc == 0;
    }
    cr_assert(TU_WAIT_FOR((goev_stats_get(s.r, -1, &st1),
                           st1.async_dropped - st0.async_dropped == (uint64_t)accepted), 2000),
              "%d writes to a closed id accepted, %llu counted as dropped", accepted,
              (unsigned long long)(st1.async_dropped - st0.async_dropped));

    /* A new connection likely reuses the slot: the old id must not reach it. */
    int fd2 = client_hello(&s, 1);
    cr_assert_neq(s.ids[1], id, "a new connection got the old id");
    for (int i = 0; i < 50; i++) {
        int rc = goev_async_write(s.r, id, msg, 5);
        cr_assert(rc == 0 || rc == -ENOTCONN);
    }
    cr_assert_eq(goev_async_write(s.r, s.ids[1], "mine", 4), 0);
    char buf[16];
    tu_set_io_timeout(fd2, 2000);
    cr_assert_eq(tu_read_exact(fd2, buf, 4), 0);
    cr_assert(memcmp(buf, "mine", 4) == 0, "stale id's bytes reached the new connection");
    tu_set_io_timeout(fd2, 200);
    ssize_t extra = read(fd2, buf, sizeof buf);
    cr_assert(extra < 0, "%zd unexpected bytes on the new connection", extra);
    close(fd2);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 2, 5000));
    tu_reactor_stop_wait(s.r);
    asrv_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* goev_async_close from a worker thread comes after that thread's async
 * writes: every byte arrives, then EOF, and the server side closes once
 * with reason 0.  A write after the close is dropped and counted. */
Test(async, close_after_writes, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct asrv s;
    asrv_init(&s, 2);
    tu_reactor_start(s.r);
    int fd = client_hello(&s, 0);
    goev_conn_id id = s.ids[0];
    enum { N = 2000, SZ = 100 };
    char buf[SZ];
    for (int i = 0; i < N; i++) {
        tu_stream_fill(9, (uint64_t)i * SZ, buf, SZ);
        cr_assert_eq(goev_async_write(s.r, id, buf, SZ), 0);
    }
    struct goev_stats st0, st1;
    goev_stats_get(s.r, -1, &st0);
    cr_assert_eq(goev_async_close(s.r, id), 0);
    int rc2 = goev_async_close(s.r, id);
    cr_assert(rc2 == 0 || rc2 == -ENOTCONN, "second close: %d", rc2);
    int rc3 = goev_async_write(s.r, id, "late", 4);
    cr_assert(rc3 == 0 || rc3 == -ENOTCONN, "write after close: %d", rc3);
    char *got = malloc((size_t)N * SZ + 16);
    ssize_t n = tu_read_to_eof(fd, got, (size_t)N * SZ + 16);
    cr_assert_eq(n, (ssize_t)N * SZ, "read %zd bytes before EOF", n);
    cr_assert_eq(tu_stream_check(9, 0, got, (size_t)n), -1, "bytes out of order");
    free(got);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.conns[0]->reason, 0, "close reason %d", s.conns[0]->reason);
    /* The second close finds the connection closing (harmless, as a second
     * goev_close); the write after it is refused on the poller. */
    uint64_t late = (uint64_t)(rc3 == 0);
    /* The second close is dropped too (counted) when the poller took it
     * after the slot was already released rather than while closing. */
    uint64_t late_max = late + (uint64_t)(rc2 == 0);
    cr_assert(TU_WAIT_FOR((goev_stats_get(s.r, -1, &st1),
                           st1.async_dropped - st0.async_dropped >= late &&
                           st1.async_dropped - st0.async_dropped <= late_max), 2000),
              "%llu messages after the close accepted, %llu dropped", (unsigned long long)late,
              (unsigned long long)(st1.async_dropped - st0.async_dropped));
    cr_assert_eq(goev_async_close(s.r, 0), -EINVAL);
    close(fd);
    tu_reactor_stop_wait(s.r);
    asrv_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- ids of connections that are closing and being replaced -------------- */

/* The poller opens and closes connections (over socketpairs) as fast as it
 * can, so their slots are freed and reused with a new generation, while
 * other threads send goev_async_write and goev_async_close to the ids it
 * publishes - ids of open connections, of closing ones and of slots already
 * reused.  goev_async_write reads a slot's generation on the calling
 * thread while the poller changes it: under ThreadSanitizer, a plain access
 * to it on either side is a reported race.  Every call must answer 0 or
 * -ENOTCONN, and the old id must never reach the new connection (the
 * write_to_closed_connection case checks the bytes). */
#define CHURN_K 8           /* connections cycling at once */
#define CHURN_BATCH 16      /* opens/closes per posted step */
#define CHURN_HAMMERS 1

struct churn;

struct churn_conn {
    goev_handler h;
    struct churn *ch;
    int state;              /* 0 free, 1 open, 2 closing (poller thread) */
    int peer;               /* the socketpair's other end */
};

struct churn {
    goev_reactor *r;
    struct churn_conn c[CHURN_K];
    goev_conn_id ids[CHURN_K];  /* for the hammer threads */
    unsigned next, ops, max_ops;
    int opens, closes, errors;
    int done;
};

static ssize_t churn_on_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static void churn_on_close(goev_handler *h, int reason)
{
    struct churn_conn *cc = (struct churn_conn *)h;
    close(cc->peer);
    cc->peer = -1;
    cc->state = 0;
    TU_INC(&cc->ch->closes);
}

static const struct goev_handler_ops churn_ops = {
    .on_read = churn_on_read, .on_close = churn_on_close,
};

static void churn_step(goev_poller *p, void *arg)
{
    struct churn *ch = arg;
    for (int i = 0; i < CHURN_BATCH; i++, ch->ops++) {
        struct churn_conn *cc = &ch->c[ch->next++ % CHURN_K];
        if (cc->state == 1) {
            /* Graceful or abrupt: writes already queued go out or not. */
            if (ch->ops & 1)
                goev_close(&cc->h);
            else
                goev_abort(&cc->h);
            cc->state = 2;
        } else if (cc->state == 0) {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
                TU_INC(&ch->errors);
                continue;
            }
            goev_handler_init(&cc->h, &churn_ops);
            cc->ch = ch;
            int rc = goev_conn_open(p, &cc->h, sv[0]);
            if (rc < 0) {
                TU_CHECK(0, "goev_conn_open: %d", rc);
                close(sv[0]);
                close(sv[1]);
                continue;
            }
            cc->peer = sv[1];
            cc->state = 1;
            TU_INC(&ch->opens);
            TU_STORE(&ch->ids[cc - ch->c], goev_handler_id(&cc->h));
        }
    }
    if (ch->ops < ch->max_ops)
        TU_CHECK(goev_post(p, churn_step, ch) == 0, "goev_post");
    else
        TU_STORE(&ch->done, 1);
}

struct churn_hammer {
    pthread_t th;
    struct churn *ch;
    uint64_t ok, notconn, other;
    int last_other;
};

static void *churn_hammer_main(void *arg)
{
    struct churn_hammer *hm = arg;
    static const char rec[16] = "0123456789abcde";
    for (unsigned n = 0; !TU_LOAD(&hm->ch->done); n++) {
        /* Throttled, to leave the poller the time to churn. */
        if ((n & 15) == 0)
            usleep(20);
        goev_conn_id id = TU_LOAD(&hm->ch->ids[n % CHURN_K]);
        if (!id)
            continue;
        int rc = (n & 7) == 7 ? goev_async_close(hm->ch->r, id)
                              : goev_async_write(hm->ch->r, id, rec, sizeof rec);
        if (rc == 0) {
            hm->ok++;
        } else if (rc == -ENOTCONN) {
            hm->notconn++;
        } else {
            hm->other++;
            hm->last_other = rc;
        }
    }
    return NULL;
}

Test(async, ids_of_closing_and_reused_slots, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    static struct churn ch;
    memset(&ch, 0, sizeof ch);
    ch.r = tu_reactor_new(1);
    ch.max_ops = (unsigned)tu_scaled(40000, 4000);
    for (int k = 0; k < CHURN_K; k++)
        ch.c[k].peer = -1;
    tu_reactor_start(ch.r);
    struct churn_hammer hm[CHURN_HAMMERS];
    for (int i = 0; i < CHURN_HAMMERS; i++) {
        hm[i] = (struct churn_hammer){.ch = &ch};
        cr_assert(pthread_create(&hm[i].th, NULL, churn_hammer_main, &hm[i]) == 0);
    }
    cr_assert_eq(goev_post(goev_reactor_poller(ch.r, 0), churn_step, &ch), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&ch.done), 15000), "the churn did not finish");
    uint64_t ok = 0, notconn = 0;
    for (int i = 0; i < CHURN_HAMMERS; i++) {
        pthread_join(hm[i].th, NULL);
        cr_assert_eq(hm[i].other, 0, "goev_async_write/close answered %d", hm[i].last_other);
        ok += hm[i].ok;
        notconn += hm[i].notconn;
    }
    tu_reactor_stop_wait(ch.r);
    goev_reactor_free(ch.r);
    cr_assert_eq(ch.errors, 0, "socketpair failed");
    cr_assert_gt(ch.opens, 100, "only %d connections opened", ch.opens);
    cr_assert_eq(ch.opens, ch.closes, "%d opened, %d closed", ch.opens, ch.closes);
    /* Both kinds of answer were seen: ids of live and of gone connections. */
    cr_assert(ok > 0 && notconn > 0, "%llu accepted, %llu refused", (unsigned long long)ok,
              (unsigned long long)notconn);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- post, broadcast, poller-local --------------------------------------- */

#define PTHREADS 3
#define POSTS 2000

static goev_poller *post_target;
static uint32_t post_next[PTHREADS];
static int post_bad, post_count;

static void post_fn(goev_poller *p, void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    unsigned t = (unsigned)(v >> 20);
    uint32_t seq = (uint32_t)(v & 0xfffff);
    if (p != post_target || goev_current_poller() != p)
        TU_INC(&post_bad);
    TU_CHECK(t < PTHREADS && seq == post_next[t], "post from thread %u: %u ran, expected %u", t,
             seq, t < PTHREADS ? post_next[t] : 0);
    if (t < PTHREADS)
        post_next[t] = seq + 1;
    TU_INC(&post_count);
}

struct poster {
    pthread_t th;
    unsigned idx;
    int errors;
};

static void *poster_main(void *arg)
{
    struct poster *ps = arg;
    for (uintptr_t s = 0; s < POSTS; s++)
        if (goev_post(post_target, post_fn, (void *)(((uintptr_t)ps->idx << 20) | s)) != 0)
            ps->errors++;
    return NULL;
}

Test(async, post_order, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(2);
    post_target = goev_reactor_poller(r, 1);
    cr_assert_eq(goev_poller_index(post_target), 1);
    cr_assert_eq(goev_poller_reactor(post_target), r);
    cr_assert_null(goev_current_poller(), "test thread is no poller");
    tu_reactor_start(r);
    struct poster ps[PTHREADS];
    for (unsigned i = 0; i < PTHREADS; i++) {
        ps[i] = (struct poster){.idx = i};
        cr_assert(pthread_create(&ps[i].th, NULL, poster_main, &ps[i]) == 0);
    }
    for (int i = 0; i < PTHREADS; i++)
        pthread_join(ps[i].th, NULL);
    for (int i = 0; i < PTHREADS; i++)
        cr_assert_eq(ps[i].errors, 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&post_count) == PTHREADS * POSTS, 5000), "%d of %d ran",
              post_count, PTHREADS * POSTS);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(post_bad, 0, "posted function ran on the wrong poller or thread");
    for (int i = 0; i < PTHREADS; i++)
        cr_assert_eq(post_next[i], POSTS);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

#define NPOLL 3
static int bc_runs[NPOLL];
static int bc_bad;
static int marker[NPOLL];
static int local_bad;

static void bc_fn(goev_poller *p, void *arg)
{
    if (arg != (void *)&bc_runs || goev_current_poller() != p)
        TU_INC(&bc_bad);
    int i = goev_poller_index(p);
    if (i >= 0 && i < NPOLL)
        TU_INC(&bc_runs[i]);
}

static void local_set(goev_poller *p, void *arg)
{
    for (unsigned s = 0; s < GOEV_LOCAL_SLOTS; s++)
        if (goev_poller_local(p, s) != NULL)
            TU_INC(&local_bad);
    goev_poller_set_local(p, 3, &marker[goev_poller_index(p)]);
    goev_poller_set_local(p, GOEV_LOCAL_SLOTS - 1, p);
}

static void local_check(goev_poller *p, void *arg)
{
    if (goev_poller_local(p, 3) != &marker[goev_poller_index(p)] ||
        goev_poller_local(p, GOEV_LOCAL_SLOTS - 1) != p || goev_poller_local(p, 0) != NULL)
        TU_INC(&local_bad);
    TU_INC((int *)arg);
}

Test(async, broadcast_and_locals, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(NPOLL);
    cr_assert_eq(goev_poller_count(r), NPOLL);
    tu_reactor_start(r);
    for (int k = 0; k < 100; k++)
        cr_assert_eq(goev_broadcast(r, bc_fn, &bc_runs), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&bc_runs[0]) + TU_LOAD(&bc_runs[1]) + TU_LOAD(&bc_runs[2]) ==
                              3 * 100, 5000));
    tu_sleep_ms(30);
    for (int i = 0; i < NPOLL; i++)
        cr_assert_eq(bc_runs[i], 100, "poller %d ran the broadcast %d times", i, bc_runs[i]);
    cr_assert_eq(bc_bad, 0);
    cr_assert_eq(goev_broadcast(r, local_set, NULL), 0);
    int checked = 0;
    /* One poller's slots are its own: a second round sees what each set. */
    cr_assert_eq(goev_broadcast(r, local_check, &checked), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&checked) == NPOLL, 5000));
    cr_assert_eq(local_bad, 0, "poller-local slots mixed up or not NULL at first");
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    tu_assert_fds(fds);
}

/* ---- stopping ------------------------------------------------------------ */

static int stopped_post_ran;

static void stop_post_fn(goev_poller *p, void *arg)
{
    TU_INC(&stopped_post_ran);
}

struct stopper {
    pthread_t th;
    struct asrv *s;
    int fds[5];
    int use_signal;
    pthread_t target;
};

static goev_reactor *sig_reactor;

static void on_sigusr1(int sig)
{
    goev_reactor_stop(sig_reactor);
}

static void *stopper_main(void *arg)
{
    struct stopper *st = arg;
    for (int k = 0; k < 5; k++) {
        st->fds[k] = tu_connect_tcp4(st->s->port);
        TU_CHECK(st->fds[k] >= 0, "connect");
        char msg[32];
        int n = snprintf(msg, sizeof msg, "hello %d\n", k);
        tu_write_all(st->fds[k], msg, (size_t)n);
    }
    TU_CHECK(TU_WAIT_FOR(TU_LOAD(&st->s->ready) == 5, 5000), "clients not registered");
    /* Posted before the stop: it must still run, once. */
    TU_CHECK(goev_post(goev_reactor_poller(st->s->r, 1), stop_post_fn, NULL) == 0, "post");
    if (st->use_signal)
        pthread_kill(st->target, SIGUSR1);
    else
        goev_reactor_stop(st->s->r);
    return NULL;
}

static void stop_test(int use_signal)
{
    int fds = tu_fd_count();
    struct asrv s;
    asrv_init(&s, 2);
    struct stopper st = {.s = &s, .use_signal = use_signal, .target = pthread_self()};
    if (use_signal) {
        sig_reactor = s.r;
        struct sigaction sa = {.sa_handler = on_sigusr1};
        sigemptyset(&sa.sa_mask);
        cr_assert(sigaction(SIGUSR1, &sa, NULL) == 0);
    }
    cr_assert(pthread_create(&st.th, NULL, stopper_main, &st) == 0);
    /* Poller 0 runs on this thread until the stop. */
    uint64_t t0 = tu_now_ms();
    int rc = goev_reactor_run(s.r);
    cr_assert_eq(rc, 0, "goev_reactor_run: %s", strerror(-rc));
    pthread_join(st.th, NULL);
    tu_assert_no_failures();
    cr_assert(tu_now_ms() - t0 < 10000);
    /* Every open connection was closed once, with -ECANCELED, before run
     * returned. */
    cr_assert_eq(s.closes, 5, "%d on_close at stop", s.closes);
    cr_assert_eq(s.canceled, 5, "%d of 5 closed with -ECANCELED (other: %d)", s.canceled,
                 s.other_reason);
    cr_assert_eq(stopped_post_ran, 1, "function posted before the stop ran %d times",
                 stopped_post_ran);
    cr_assert_eq(goev_reactor_run(s.r), -EALREADY);
    for (int k = 0; k < 5; k++) {
        size_t extra;
        int e = tu_wait_eof(st.fds[k], 2000, &extra);
        cr_assert(e == 1 || e == -ECONNRESET, "client %d not disconnected at stop", k);
        close(st.fds[k]);
    }
    if (use_signal)
        signal(SIGUSR1, SIG_DFL);
    asrv_fini(&s);
    tu_assert_fds(fds);
}

Test(async, stop_from_other_thread, .init = init_test, .timeout = TU_TIMEOUT)
{
    stop_test(0);
}

Test(async, stop_from_signal_handler, .init = init_test, .timeout = TU_TIMEOUT)
{
    stop_test(1);
}
