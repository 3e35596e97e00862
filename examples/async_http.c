/* async_http.c - HTTP answered by worker threads, written back with
 * goev_async_write.
 *
 *   examples/async_http -p PORT -t POLLERS -w WORKERS [-r] [-s] [-d MAX_DELAY_US]
 *
 * Three kinds of threads:
 *   - one accepting poller (its own reactor), which hands every connection
 *     to the connection reactor;
 *   - the -t connection pollers, which read and parse requests and turn
 *     each one into a small job (what to answer, and to which connection);
 *   - the -w workers, plain threads with a FIFO each, which build the
 *     answers and send them with goev_async_write.  -d adds 0..MAX_DELAY_US
 *     microseconds of simulated work to every job.
 *
 * The URLs and answers are those of techempower.c: GET/HEAD /plaintext and
 * /json, 404 for other paths, 405 for other methods on those two, HTTP/1.0
 * keep-alive rules, and 400/413/431/501 followed by a close for requests
 * that cannot be parsed.
 *
 * A worker never touches a connection's memory: the connection can close
 * (peer reset, reactor stop) at any moment, on its poller's thread.  A job
 * carries the goev_conn_id only; goev_async_write/goev_async_close on an id
 * whose connection has gone are dropped by goev, never a use after free.
 *
 * -p 0 picks a free port; -r puts SO_REUSEPORT on the listener; -s prints
 * the statistics of both reactors, summed, on exit.  SIGINT/SIGTERM stop
 * the reactors, then the workers; everything is freed and the exit status
 * is 0. */
#include "goev.h"
#include "serve.h"
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RESP_MAX 512            /* room one answer may take */
#define OUT_FLUSH (64 * 1024)   /* a worker sends its buffered answers past this */
#define TAKE_MAX 64             /* jobs a worker takes out of its queue at once */
#define PUSH_MAX 64             /* jobs a poller collects before queueing them */
/* Back-pressure.  A client can pipeline requests far faster than workers
 * with simulated work answer them, and one that never reads its answers
 * makes them pile up in goev's output queue.  Neither may grow without
 * bound: a poller stops reading a connection while its worker has more
 * than QUEUE_HIGH jobs waiting (and looks again every RETRY_MS until it is
 * down to QUEUE_LOW).  Answers the client does not read need no code here:
 * past goev's output high-water mark the library itself stops reading the
 * connection until its queue drains. */
#define QUEUE_HIGH 8192
#define QUEUE_LOW 1024
#define RETRY_MS 1

static const char body_plain[] = "Hello, World!";
static const char body_json[] = "{\"message\":\"Hello, World!\"}";

/* ---- jobs ------------------------------------------------------------------ */

enum { BODY_NONE, BODY_PLAIN, BODY_JSON, BODY_REASON };

#define JOB_HEAD 0x1u           /* HEAD: the head of the answer only */
#define JOB_CLOSE 0x2u          /* answer with "Connection: close", then close */
#define JOB_KEEP10 0x4u         /* HTTP/1.0 keep-alive: say "Connection: keep-alive" */

/* Everything a worker needs to answer one request: no pointer into the
 * connection's memory or its input (both may be gone by then). */
struct job {
    goev_conn_id id;
    uint16_t status;            /* 200, 404, 405, 400, 413, 431, 501; 0 = no answer */
    uint8_t body;               /* BODY_* */
    uint8_t flags;              /* JOB_* */
};

/* ---- workers --------------------------------------------------------------- */

struct worker {
    /* Shared with the pollers, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *ring;           /* FIFO: a ring that doubles when full */
    size_t cap, head, len;
    size_t depth;               /* len, readable without mu (atomics) */
    int stop;

    /* Set before the thread starts, read-only afterwards. */
    goev_reactor *r;
    unsigned max_delay_us;
    int index;
    pthread_t thread;
    int started;

    /* The worker thread's own. */
    uint64_t rng;
    char *out;                  /* answers to one connection, not sent yet */
    size_t out_len, out_cap;
    goev_conn_id out_id;
    struct http_clock clock;
    char plain[256], json[256]; /* the keep-alive HTTP/1.1 200s, whole */
    size_t plain_len, json_len;
} __attribute__((aligned(64)));

struct app {
    struct worker *workers;
    int nworkers;
};

/* The two keep-alive answers are rendered whole once a second, with the
 * Date. */
static void date_refresh(struct worker *w)
{
    if (!http_clock_tick(&w->clock))
        return;
    w->plain_len = http_answer(w->plain, sizeof w->plain, 200, "text/plain", body_plain,
                               sizeof body_plain - 1, w->clock.date, "", 0);
    w->json_len = http_answer(w->json, sizeof w->json, 200, "application/json", body_json,
                              sizeof body_json - 1, w->clock.date, "", 0);
}

/* Send the buffered answers.  If goev could not take them (out of memory)
 * the connection would miss an answer and the next ones would answer the
 * wrong requests: close it instead.  -ENOTCONN (gone) needs nothing. */
static void worker_flush(struct worker *w)
{
    if (!w->out_len)
        return;
    if (goev_async_write(w->r, w->out_id, w->out, w->out_len) == -ENOMEM)
        goev_async_close(w->r, w->out_id);
    w->out_len = 0;
}

static void worker_delay(struct worker *w)
{
    /* xorshift64: per-worker, no lock, good enough to shuffle timing. */
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    unsigned us = (unsigned)(w->rng % ((uint64_t)w->max_delay_us + 1));
    struct timespec ts = { .tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void worker_answer(struct worker *w, const struct job *j)
{
    if (w->out_len && j->id != w->out_id)
        worker_flush(w);
    w->out_id = j->id;
    if (j->status) {
        if (w->out_cap - w->out_len < RESP_MAX) {
            size_t cap = w->out_cap ? w->out_cap * 2 : OUT_FLUSH + RESP_MAX;
            char *p = realloc(w->out, cap);
            if (!p) {
                /* This answer cannot be made: drop the connection rather
                 * than answer its later requests out of turn. */
                worker_flush(w);
                goev_async_close(w->r, j->id);
                return;
            }
            w->out = p;
            w->out_cap = cap;
        }
        char *dst = w->out + w->out_len;
        if (j->status == 200 && !j->flags) {        /* the common case: one memcpy */
            const char *src = j->body == BODY_PLAIN ? w->plain : w->json;
            size_t n = j->body == BODY_PLAIN ? w->plain_len : w->json_len;
            memcpy(dst, src, n);
            w->out_len += n;
        } else {
            const char *body = NULL, *ctype = "text/plain";
            if (j->body == BODY_PLAIN)
                body = body_plain;
            else if (j->body == BODY_JSON)
                body = body_json, ctype = "application/json";
            else
                body = http_status_reason(j->status);
            const char *conn_hdr = (j->flags & JOB_CLOSE) ? "Connection: close\r\n"
                                 : (j->flags & JOB_KEEP10) ? "Connection: keep-alive\r\n" : "";
            w->out_len += http_answer(dst, RESP_MAX, j->status, ctype, body, strlen(body), w->clock.date,
                                 conn_hdr, (j->flags & JOB_HEAD) != 0);
        }
    }
    if (j->flags & JOB_CLOSE) {
        /* goev_async_close is ordered after this thread's writes to the
         * connection: the answer leaves first, then the close. */
        worker_flush(w);
        goev_async_close(w->r, j->id);
    } else if (w->out_len >= OUT_FLUSH) {
        worker_flush(w);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct job jobs[TAKE_MAX];
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->len && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) {
            /* The reactors have stopped: what is left could not be sent. */
            pthread_mutex_unlock(&w->mu);
            break;
        }
        size_t n = 0;
        while (n < TAKE_MAX && w->len) {
            jobs[n++] = w->ring[w->head];
            w->head = (w->head + 1) & (w->cap - 1);
            w->len--;
        }
        __atomic_store_n(&w->depth, w->len, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&w->mu);

        date_refresh(w);
        for (size_t i = 0; i < n; i++) {
            if (w->max_delay_us) {
                /* Simulated work: what is done leaves before it starts. */
                worker_flush(w);
                worker_delay(w);
                date_refresh(w);
            }
            worker_answer(w, &jobs[i]);
        }
        /* The queue may hold more jobs for the same connection: answers
         * leave once per batch taken, not once per request. */
        worker_flush(w);
    }
    return NULL;
}

/* Queue n jobs for w (a poller thread).  0 or -ENOMEM. */
static int worker_push(struct worker *w, const struct job *jobs, size_t n)
{
    pthread_mutex_lock(&w->mu);
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 1024;
        while (cap < w->len + n)
            cap *= 2;
        struct job *ring = malloc(cap * sizeof *ring);
        if (!ring) {
            pthread_mutex_unlock(&w->mu);
            return -ENOMEM;
        }
        for (size_t i = 0; i < w->len; i++)     /* unwrap, oldest first */
            ring[i] = w->ring[(w->head + i) & (w->cap - 1)];
        free(w->ring);
        w->ring = ring;
        w->cap = cap;
        w->head = 0;
    }
    int was_empty = w->len == 0;
    for (size_t i = 0; i < n; i++)
        w->ring[(w->head + w->len + i) & (w->cap - 1)] = jobs[i];
    w->len += n;
    __atomic_store_n(&w->depth, w->len, __ATOMIC_RELAXED);
    /* The worker sleeps only on an empty queue. */
    if (was_empty)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static size_t worker_depth(struct worker *w)
{
    return __atomic_load_n(&w->depth, __ATOMIC_RELAXED);
}

static int workers_start(struct app *a, goev_reactor *r, unsigned max_delay_us)
{
    for (int i = 0; i < a->nworkers; i++) {
        struct worker *w = &a->workers[i];
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->r = r;
        w->max_delay_us = max_delay_us;
        w->index = i;
        w->rng = (0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) << 32) ^ (uint64_t)time(NULL)) | 1;
        w->clock.sec = -1;
    }
    /* Workers take no process signals: SIGINT/SIGTERM reach the main
     * thread, which stops the reactors. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = 0;
    for (int i = 0; i < a->nworkers && !err; i++) {
        err = pthread_create(&a->workers[i].thread, NULL, worker_main, &a->workers[i]);
        a->workers[i].started = err == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        fprintf(stderr, "pthread_create: %s\n", strerror(err));
    return err ? -err : 0;
}

static void workers_stop(struct app *a)
{
    for (int i = 0; i < a->nworkers; i++) {
        struct worker *w = &a->workers[i];
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    for (int i = 0; i < a->nworkers; i++) {
        struct worker *w = &a->workers[i];
        if (w->started)
            pthread_join(w->thread, NULL);
        free(w->ring);
        free(w->out);
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
    }
}

/* ---- connections (poller threads) ----------------------------------------- */

#define PAUSE_QUEUE 0x1u        /* the worker's queue is over QUEUE_HIGH */
#define PAUSE_CLOSING 0x4u      /* a job that closes is on its way: for good */

struct conn {
    goev_handler h;
    goev_timer retry;           /* PAUSE_QUEUE: look at the queue again */
    goev_conn_id id;
    struct worker *w;
    unsigned paused;            /* PAUSE_* reasons; reading is paused while any */
};

static struct conn *conn_of(goev_handler *h)
{
    return (struct conn *)((char *)h - offsetof(struct conn, h));
}

static void pause_for(struct conn *c, unsigned why)
{
    if (!c->paused)
        goev_pause_read(&c->h);
    c->paused |= why;
}

static int resume_from(struct conn *c, unsigned why)
{
    unsigned was = c->paused;
    c->paused &= ~why;
    if (was && !c->paused) {
        int rc = goev_resume_read(&c->h);
        if (rc < 0 && rc != -ENOTCONN)
            return rc;
    }
    return 0;
}

/* Which worker answers a connection.  All of a connection's jobs go to one
 * worker, chosen from its id, and that is what keeps pipelined answers in
 * request order: the poller queues a connection's jobs in the order of its
 * requests, the worker's queue is FIFO and it finishes one job before the
 * next, and goev delivers the async writes one thread makes to a
 * connection in the order they were made (and a goev_async_close after
 * them).  So no sequence numbers, no reorder buffer and no hand-back to the
 * poller are needed.  The price is that one connection's requests are never
 * worked on in parallel, and a slow job holds up the other connections of
 * its worker - with HTTP/1.1 pipelining a client waits for the answers in
 * order anyway.  The id is hashed (not just taken modulo the worker count)
 * because its fields - poller, slot, generation - are small sequential
 * numbers that would map unevenly. */
static struct worker *worker_for(struct app *a, goev_conn_id id)
{
    uint64_t x = id;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return &a->workers[x % (uint64_t)a->nworkers];
}

static int on_open(goev_handler *h)
{
    struct conn *c = conn_of(h);
    c->id = goev_handler_id(h);
    c->w = worker_for(h->user, c->id);
    return 0;
}

static void job_for(struct job *j, goev_conn_id id, const struct http_req *rq)
{
    *j = (struct job){ .id = id, .status = 200 };
    if (rq->path_len == 10 && !memcmp(rq->path, "/plaintext", 10))
        j->body = BODY_PLAIN;
    else if (rq->path_len == 5 && !memcmp(rq->path, "/json", 5))
        j->body = BODY_JSON;
    else
        j->status = 404, j->body = BODY_REASON;
    if (j->status == 200 && rq->method_id != HTTP_REQ_GET && rq->method_id != HTTP_REQ_HEAD)
        j->status = 405, j->body = BODY_REASON;
    if (rq->method_id == HTTP_REQ_HEAD)
        j->flags |= JOB_HEAD;
    /* An HTTP/1.0 client closes unless told otherwise; a closing answer
     * says so. */
    if (!rq->keep_alive)
        j->flags |= JOB_CLOSE;
    else if (rq->minor == 0)
        j->flags |= JOB_KEEP10;
}

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = conn_of(h);
    if (c->paused & PAUSE_CLOSING)      /* the rest of the stream is not ours to answer */
        return (ssize_t)len;

    struct job jobs[PUSH_MAX];
    size_t n = 0, off = 0;
    int rc;
    while (off < len) {
        if (n == PUSH_MAX) {
            if ((rc = worker_push(c->w, jobs, n)) < 0)
                return rc;
            n = 0;
            if (worker_depth(c->w) > QUEUE_HIGH) {
                /* Keep the rest (goev presents it again on resume). */
                pause_for(c, PAUSE_QUEUE);
                break;
            }
        }
        struct http_req rq;
        ssize_t k = http_req_parse(data + off, len - off, &rq);
        if (k == 0)
            break;                      /* incomplete: goev keeps the tail */
        if (k < 0) {
            /* After a malformed request the stream cannot be trusted:
             * answer it, close, and drop whatever follows. */
            jobs[n++] = (struct job){ .id = c->id, .status = (uint16_t)-k,
                                      .body = BODY_REASON, .flags = JOB_CLOSE };
            c->paused |= PAUSE_CLOSING;
            break;
        }
        off += (size_t)k;
        job_for(&jobs[n++], c->id, &rq);
        if (jobs[n - 1].flags & JOB_CLOSE) {
            c->paused |= PAUSE_CLOSING;
            break;
        }
    }
    if (n && (rc = worker_push(c->w, jobs, n)) < 0)
        return rc;

    if (c->paused & PAUSE_CLOSING) {
        /* The worker closes the connection after the last answer; until
         * then nothing more is read (the bytes stay in the kernel). */
        goev_pause_read(h);
        return (ssize_t)len;
    }
    if (!(c->paused & PAUSE_QUEUE) && worker_depth(c->w) > QUEUE_HIGH)
        pause_for(c, PAUSE_QUEUE);
    if ((c->paused & PAUSE_QUEUE) && !goev_timer_active(&c->retry)) {
        rc = goev_timer_start(goev_handler_poller(h), h, &c->retry, RETRY_MS, 0);
        if (rc < 0)
            return rc;
    }
    return (ssize_t)off;
}

static int on_timeout(goev_handler *h, goev_timer *t)
{
    struct conn *c = conn_of(h);
    if (!(c->paused & PAUSE_QUEUE))
        return 0;
    if (worker_depth(c->w) > QUEUE_LOW)
        return goev_timer_start(goev_handler_poller(h), h, t, RETRY_MS, 0);
    return resume_from(c, PAUSE_QUEUE);
}

/* The peer will send no more.  Answers to its last requests may still be
 * with the worker: closing here would lose them.  The close goes through
 * the same worker instead, behind them; the connection stays half-open
 * until then.  (goev reports EOF only once the bytes before it were
 * presented, never while reading is paused.) */
static int on_eof(goev_handler *h)
{
    struct conn *c = conn_of(h);
    if (c->paused & PAUSE_CLOSING)
        return 0;
    c->paused |= PAUSE_CLOSING;
    struct job j = { .id = c->id, .status = 0, .flags = JOB_CLOSE };
    return worker_push(c->w, &j, 1);
}

static void on_close(goev_handler *h, int reason)
{
    free(conn_of(h));
}

static const struct goev_handler_ops conn_ops = {
    .on_open = on_open,
    .on_read = on_read,
    .on_eof = on_eof,
    .on_timeout = on_timeout,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &conn_ops);
    goev_timer_init(&c->retry);
    c->h.user = arg;
    return &c->h;
}

/* ---- main ------------------------------------------------------------------ */

struct extra {
    int workers;
    long max_delay_us;
};

static int take_opt(int opt, const char *arg, void *ctx)
{
    struct extra *x = ctx;
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0')
        return -1;
    if (opt == 'w') {
        if (v < 1 || v > 1024)
            return -1;
        x->workers = (int)v;
    } else {
        if (v < 0 || v > 10000000)
            return -1;
        x->max_delay_us = v;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct extra x = { .workers = 4, .max_delay_us = 0 };
    const struct serve_extra xo = {
        .optstring = "w:d:",
        .usage = "[-w WORKERS (1..1024, default 4)] [-d MAX_DELAY_US (0..10000000)]",
        .take = take_opt,
        .ctx = &x,
    };
    struct serve_opts o;
    serve_parse_extra(argc, argv, &o, &xo);

    /* One poller accepts; -t pollers serve.  A separate accepting reactor
     * keeps accept(2) off the threads that parse. */
    goev_reactor *accept_r, *conn_r;
    if (serve_reactor_new_n(1, &accept_r))
        return 1;
    if (serve_reactor_new_n(o.pollers, &conn_r)) {
        goev_reactor_free(accept_r);
        return 1;
    }

    struct app a = { .nworkers = x.workers };
    a.workers = aligned_alloc(64, sizeof *a.workers * (size_t)a.nworkers);
    if (!a.workers) {
        fprintf(stderr, "out of memory\n");
        goev_reactor_free(conn_r);
        goev_reactor_free(accept_r);
        return 1;
    }
    memset(a.workers, 0, sizeof *a.workers * (size_t)a.nworkers);

    int status = 1;
    if (workers_start(&a, conn_r, (unsigned)x.max_delay_us) == 0)
        status = serve_run2(accept_r, conn_r, &o, new_handler, &a);
    /* No poller runs any more: the workers' last async calls were refused
     * or dropped, and no job can be queued after this. */
    workers_stop(&a);
    goev_reactor_free(conn_r);
    goev_reactor_free(accept_r);
    free(a.workers);
    return status;
}
