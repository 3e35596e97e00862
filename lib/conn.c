/* conn.c - handlers and their connections: slots, input delivery with the
 * kept tail, output queue and flushing, close, timers, connector, watches. */
#include "goev-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- slots ------------------------------------------------------------- */

static struct goev__conn *slot_alloc(goev_poller *p, goev_handler *h)
{
    uint32_t slot;
    if (p->nfree) {
        slot = p->free_slots[--p->nfree];
    } else {
        if (p->nslots >= GOEV__MAX_SLOTS)
            return NULL;
        slot = p->nslots;
        uint32_t ci = slot / GOEV__SLOT_CHUNK;
        if (!p->chunks[ci]) {
            struct goev__conn *chunk = goev__calloc(GOEV__SLOT_CHUNK, p->slot_stride);
            uint32_t *fs = goev__realloc(p->free_slots, (size_t)(ci + 1) * GOEV__SLOT_CHUNK * sizeof *fs);
            if (!chunk || !fs) {
                goev__free(chunk);
                if (fs)
                    p->free_slots = fs;
                return NULL;
            }
            p->free_slots = fs;
            for (uint32_t i = 0; i < GOEV__SLOT_CHUNK; i++)
                __atomic_store_n(&goev__chunk_slot(p, chunk, i)->gen, 1, __ATOMIC_RELAXED);
            /* release: the generations above are seen with the pointer */
            __atomic_store_n(&p->chunks[ci], chunk, __ATOMIC_RELEASE);
            p->nchunks = ci + 1;
        }
        p->nslots++;
    }
    struct goev__conn *c = goev__chunk_slot(p, p->chunks[slot / GOEV__SLOT_CHUNK], slot % GOEV__SLOT_CHUNK);
    /* A connection closed after it was marked dirty stays linked on the
     * flush list until the end of the pass: keep the link. */
    uint32_t dirty = c->flags & GOEV__C_DIRTY;
    struct goev__conn *dirty_next = c->dirty_next;
    memset((char *)c + offsetof(struct goev__conn, slot), 0,
           p->slot_stride - offsetof(struct goev__conn, slot));    /* and the backend's part */
    c->flags = dirty;
    c->dirty_next = dirty_next;
    c->slot = slot;
    c->p = p;
    c->h = h;
    c->fd = -1;
    c->out_high = p->out_high;
    c->out_low = p->out_low;
    h->conn_ = c;
    h->poller_ = p;
    p->nlive++;
    return c;
}

static void slot_free(struct goev__conn *c)
{
    goev_poller *p = c->p;
    uint32_t gen = goev__gen(c) + 1;
    __atomic_store_n(&c->gen, gen ? gen : 1, __ATOMIC_RELAXED);    /* see goev__gen */
    c->h = NULL;
    c->flags = GOEV__C_DEAD | (c->flags & GOEV__C_DIRTY);   /* see slot_alloc */
    goev__assert(p->nlive > 0);
    p->free_slots[p->nfree++] = c->slot;
    p->nlive--;
}

void goev__slots_fini(goev_poller *p)
{
    for (uint32_t i = 0; i < p->nchunks; i++) {
        struct goev__conn *chunk = p->chunks[i];
        if (!chunk)
            continue;
        for (uint32_t k = 0; k < GOEV__SLOT_CHUNK; k++) {
            struct goev__conn *c = goev__chunk_slot(p, chunk, k);
            goev__free(c->in);
            goev__outq_clear(&p->pool, &c->out);
            if (c->cx && (c->flags & GOEV__C_TLS))
                goev__tls_free(c);
            else if (c->cx)
                goev__pool_put(&p->pool, c->cx, GOEV__CONNECTING_BLOCK);
            c->cx = NULL;
        }
        goev__free(chunk);
        p->chunks[i] = NULL;
    }
    goev__free(p->free_slots);
    p->free_slots = NULL;
}

/* Attach h to p, with a new slot or the one its timers already hold. */
static struct goev__conn *attach(goev_poller *p, goev_handler *h, int kind, int *err)
{
    *err = -EINVAL;
    if (!h || (h->conn_ && h->poller_ != p))
        return NULL;
    struct goev__conn *c = h->conn_;
    if (c) {
        if (c->kind != GOEV__K_NONE || (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT)))
            return NULL;
    } else if (!(c = slot_alloc(p, h))) {
        *err = -ENOMEM;
        return NULL;
    }
    c->kind = (uint8_t)kind;
    *err = 0;
    return c;
}

/* Undo attach() of a handler whose registration failed before any callback:
 * the handler goes back to how the caller gave it. */
static void detach(struct goev__conn *c)
{
    c->fd = -1;
    if (c->flags & GOEV__C_TLS)
        goev__tls_free(c);
    if (c->h->timers_) {        /* keeps its timers: back to a timer slot */
        c->kind = GOEV__K_NONE;
        c->flags = 0;
        return;
    }
    goev_handler *h = c->h;
    slot_free(c);
    h->conn_ = NULL;
    h->poller_ = NULL;
}

/* ---- handlers ---------------------------------------------------------- */

void goev_handler_init(goev_handler *h, const struct goev_handler_ops *ops)
{
    memset(h, 0, sizeof *h);
    h->ops = ops;
}

goev_poller *goev_handler_poller(const goev_handler *h) { return h->poller_; }

goev_conn_id goev_handler_id(const goev_handler *h)
{
    const struct goev__conn *c = h->conn_;
    if (!c || c->kind != GOEV__K_STREAM)
        return 0;
    return goev__mkid((uint32_t)c->p->idx, c->slot, goev__gen(c));
}

int goev_handler_fd(const goev_handler *h)
{
    const struct goev__conn *c = h ? h->conn_ : NULL;
    return c && !(c->flags & GOEV__C_DIRECT) ? c->fd : -1;
}

int goev__conn_fd(struct goev__conn *c)
{
    if (c->fd < 0)
        return -ENOTCONN;
    if (!(c->flags & GOEV__C_DIRECT))
        return c->fd;
    int rc = c->p->be->fd_install ? c->p->be->fd_install(c) : -EOPNOTSUPP;
    return rc < 0 ? rc : c->fd;
}

int goev_handler_fd_install(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind == GOEV__K_NONE || (c->flags & GOEV__C_CLOSING))
        return -ENOTCONN;
    return goev__conn_fd(c);
}

/* ---- the later list: kept tails to re-present, on_close to call ---------- */

static void push_later(struct goev__conn *c)
{
    if (!(c->flags & GOEV__C_LATER)) {
        c->flags |= GOEV__C_LATER;
        c->later_next = c->p->later;
        c->p->later = c;
    }
}

void goev__push_later(struct goev__conn *c)
{
    push_later(c);
}

static void deliver_tail(struct goev__conn *c);

static void finish(struct goev__conn *c)
{
    goev_handler *h = c->h;
    int reason = c->close_reason;
    if (c->kind == GOEV__K_STREAM && (c->flags & GOEV__C_OPEN))    /* counted in opened() */
        GOEV__STAT_ADD(c->p, conns, (uint64_t)-1);
    goev__free(c->in);
    c->in = NULL;
    c->in_len = 0;
    c->in_cap = 0;
    goev__outq_clear(&c->p->pool, &c->out);
    if (c->flags & GOEV__C_TLS)
        goev__tls_free(c);
    slot_free(c);
    h->conn_ = NULL;    /* h->poller_ stays: on_close may want its poller */
    if (h->ops && h->ops->on_close)
        h->ops->on_close(h, reason);
}

/* One round per call: what is put on the list during the round waits for the next
 * pass, so a handler that keeps re-arming cannot starve the loop. */
void goev__run_later(goev_poller *p)
{
    struct goev__conn *c = p->later;
    p->later = NULL;
    while (c) {
        struct goev__conn *next = c->later_next;
        c->flags &= ~GOEV__C_LATER;
        if (c->flags & GOEV__C_RELEASED)
            finish(c);
        else if (GOEV__UNLIKELY(c->flags & GOEV__C_RESOLVING))
            goev__resolve_later(c);
        else if (c->in_len && !(c->flags & (GOEV__C_NOREAD | GOEV__C_CLOSING | GOEV__C_CLOSE_WANT)))
            deliver_tail(c);
        c = next;
    }
}

void goev__on_released(struct goev__conn *c)
{
    goev__assert(!(c->flags & GOEV__C_RELEASED));
    /* The backend closes a direct descriptor itself; one still here was
     * abandoned (the poller failed) and goes with its ring's file table. */
    if (c->fd >= 0 && !(c->flags & (GOEV__C_KEEP_FD | GOEV__C_DIRECT))) {
        close(c->fd);
        GOEV__STAT_INC(c->p, sys_other);
    }
    c->fd = -1;
    c->flags &= ~GOEV__C_DIRECT;
    /* A failed attempt of a connect by name: the slot goes on. */
    if (GOEV__UNLIKELY(c->flags & GOEV__C_RESOLVING) && goev__resolve_released(c))
        return;
    c->flags |= GOEV__C_RELEASED;
    push_later(c);
}

/* ---- close ------------------------------------------------------------- */

static void cancel_timers(goev_handler *h)
{
    while (h->timers_)
        goev_timer_cancel(h->timers_);
}

/* The connect is over (or never started): its timeout goes, and its memory
 * back to the pool. */
static void connecting_end(struct goev__conn *c)
{
    struct goev__connecting *cx = c->cx;
    if (cx) {
        goev_timer_cancel(&cx->timer);
        if (c->flags & GOEV__C_TLS)     /* part of the TLS state: stays */
            return;
        goev__pool_put(&c->p->pool, cx, GOEV__CONNECTING_BLOCK);
        c->cx = NULL;
    }
}

/* A TLS client closing gracefully, waiting for the server's EOF. */
static inline bool tls_lingering(const struct goev__conn *c)
{
    return GOEV__UNLIKELY(c->flags & GOEV__C_TLS) && goev__tls_lingering(c);
}

void goev__conn_close(struct goev__conn *c, int reason)
{
    if (GOEV__UNLIKELY(c->flags & GOEV__C_RESOLVING) && goev__resolve_close(c, reason))
        return;
    if (c->flags & GOEV__C_CLOSING)
        return;
    /* A lingering close keeps its reason unless an error overtakes it;
     * a TLS client waiting for the server's EOF (all of its own output
     * out) keeps it also through a reactor's stop. */
    bool keep = (c->flags & GOEV__C_CLOSE_WANT) &&
                (reason == 0 || (reason == -ECANCELED && tls_lingering(c)));
    if (!keep)
        c->close_reason = reason;
    c->flags |= GOEV__C_CLOSING;
    c->flags &= ~GOEV__C_CLOSE_WANT;
    cancel_timers(c->h);
    connecting_end(c);
    if (c->kind == GOEV__K_NONE)
        goev__on_released(c);
    else
        c->p->be->conn_close(c);
}

void goev__close_all(goev_poller *p, int reason)
{
    for (uint32_t s = 0; s < p->nslots; s++) {
        struct goev__conn *c = goev__slot_conn(p, s);
        if (c)
            goev__conn_close(c, reason);
    }
}

/* The backend failed (its wait returns errors): nothing will come back
 * from it, so every connection still closing is released by the core. */
void goev__abandon_all(goev_poller *p)
{
    for (uint32_t s = 0; s < p->nslots; s++) {
        struct goev__conn *c = goev__slot_conn(p, s);
        if (!c || (c->flags & GOEV__C_RELEASED))
            continue;
        goev__conn_close(c, -ECANCELED);
        if (!(c->flags & GOEV__C_RELEASED))
            goev__on_released(c);
    }
}

static void do_shutdown(struct goev__conn *c);

/* A TLS client whose close_notify is out: half-close and wait for the
 * server's EOF (goev__tls_linger arms the bound).  True if it waits. */
static bool tls_linger(struct goev__conn *c)
{
    if (!(c->flags & GOEV__C_TLS) || (c->flags & (GOEV__C_EOF | GOEV__C_CLOSING)) ||
        !goev__tls_linger(c))
        return false;
    if (!(c->flags & GOEV__C_SHUT_DONE))
        do_shutdown(c);
    return true;
}

/* Stop reading (a TLS connection drains instead: see GOEV__C_DRAIN), send
 * what is queued, then close with reason (a TLS client lingers first). */
void goev__close_gracefully(struct goev__conn *c, int reason)
{
    if (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT))
        return;
    bool tls = GOEV__UNLIKELY(c->flags & GOEV__C_TLS);
    bool busy = c->out.bytes || (tls && goev__tls_busy(c, true));
    if (c->kind == GOEV__K_STREAM && (c->flags & GOEV__C_OPEN) && (busy || (tls && tls_linger(c)))) {
        c->flags |= GOEV__C_CLOSE_WANT;
        c->close_reason = reason;
        if (tls && !(c->flags & GOEV__C_EOF) && goev__tls_drains(c)) {
            /* Go on reading, whatever held reading off: the application
             * will not see these bytes, but left unread they would turn
             * the close into a reset that can lose our output. */
            bool was_off = c->flags & GOEV__C_NOREAD;
            c->flags = (c->flags | GOEV__C_DRAIN) & ~GOEV__C_NOREAD;
            int rc = was_off ? c->p->be->conn_start(c) : 0;
            if (rc < 0) {
                goev__conn_close(c, rc);
                return;
            }
        } else if (!(c->flags & (GOEV__C_NOREAD | GOEV__C_EOF))) {
            c->p->be->conn_pause(c);
        }
        goev__mark_dirty(c);
        return;
    }
    goev__conn_close(c, reason);
}

int goev_close(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c)
        return -EINVAL;
    goev__close_gracefully(c, 0);
    return 0;
}

int goev_abort(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c)
        return -EINVAL;
    c->flags &= ~GOEV__C_CLOSE_WANT;
    goev__conn_close(c, -ECONNABORTED);
    return 0;
}

/* A callback's verdict: < 0 closes with that reason. */
static inline bool verdict(struct goev__conn *c, int rc)
{
    if (rc < 0) {
        goev__conn_close(c, rc);
        return false;
    }
    return !(c->flags & GOEV__C_CLOSING);
}

/* ---- input ------------------------------------------------------------- */

static int keep_tail(struct goev__conn *c, const char *data, size_t len)
{
    size_t need = (size_t)c->in_len + len;
    /* in_len and in_cap are 32 bits: a tail never reaches 4 GiB */
    if (need > c->p->r->opts.max_input || need > UINT32_MAX)
        return -EMSGSIZE;
    if (need > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 1024;
        while (cap < need)
            cap *= 2;
        if (cap > UINT32_MAX)
            cap = UINT32_MAX;
        char *n = goev__realloc(c->in, cap);
        if (!n)
            return -ENOMEM;
        c->in = n;
        c->in_cap = (uint32_t)cap;
    }
    memmove(c->in + c->in_len, data, len);
    c->in_len = (uint32_t)need;
    return 0;
}

/* Call on_read and apply its answer; returns what was consumed, or -1 if
 * the connection was closed. */
static ssize_t call_read(struct goev__conn *c, const char *data, size_t len)
{
    goev_handler *h = c->h;
    ssize_t n = h->ops->on_read(h, data, len);
    if (n < 0 || (size_t)n > len) {
        goev__conn_close(c, n < 0 ? (int)n : -EINVAL);
        return -1;
    }
    return n;
}

static void deliver_tail(struct goev__conn *c)
{
    ssize_t n = call_read(c, c->in, c->in_len);
    if (n <= 0)
        return;
    c->in_len -= (uint32_t)n;
    if (c->in_len)
        memmove(c->in, c->in + n, c->in_len);
}

void goev__on_data(struct goev__conn *c, const char *data, size_t len)
{
    GOEV__STAT_ADD(c->p, bytes_in, len);
    if ((c->flags & GOEV__C_CLOSING) ||
        (c->flags & (GOEV__C_CLOSE_WANT | GOEV__C_DRAIN)) == GOEV__C_CLOSE_WANT)
        return;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS)) {
        goev__tls_input(c, data, len);      /* plaintext comes back in goev__deliver */
        return;
    }
    goev__deliver(c, data, len);
}

void goev__deliver(struct goev__conn *c, const char *data, size_t len)
{
    if (c->in_len || (c->flags & GOEV__C_NOREAD)) {
        int rc = keep_tail(c, data, len);
        if (rc < 0) {
            goev__conn_close(c, rc);
            return;
        }
        if (!(c->flags & GOEV__C_NOREAD))
            deliver_tail(c);
        return;
    }
    ssize_t n = call_read(c, data, len);
    if (n < 0 || (size_t)n == len || (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT)))
        return;
    int rc = keep_tail(c, data + n, len - (size_t)n);
    if (rc < 0)
        goev__conn_close(c, rc);
}

void goev__on_eof(struct goev__conn *c)
{
    if (c->flags & (GOEV__C_CLOSING | GOEV__C_EOF))
        return;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS) && goev__tls_eof(c))
        return;
    goev__eof_plain(c);
}

void goev__eof_plain(struct goev__conn *c)
{
    if (c->flags & (GOEV__C_CLOSING | GOEV__C_EOF))
        return;
    c->flags |= GOEV__C_EOF;
    if (!(c->flags & GOEV__C_NOREAD))
        c->p->be->conn_pause(c);        /* may fail and close c */
    if (c->flags & GOEV__C_CLOSING)
        return;
    if (c->flags & GOEV__C_CLOSE_WANT) {
        /* A TLS client waiting for the server's end has it. */
        if (tls_lingering(c))
            goev__conn_close(c, c->close_reason);
        return;
    }
    goev_handler *h = c->h;
    int rc = h->ops->on_eof ? h->ops->on_eof(h) : 0;
    if ((rc == 0 && h->ops->on_eof) || (c->flags & GOEV__C_CLOSING))
        return;
    goev__close_gracefully(c, rc);
}

void goev__on_error(struct goev__conn *c, int err)
{
    if (c->flags & GOEV__C_CONNECTING) {
        goev__on_connected(c, err);
        return;
    }
    goev__conn_close(c, err);
}

/* Reading off for why (GOEV__C_PAUSED or GOEV__C_THROTTLED); the backend
 * stops only if nothing else held reading off already. */
static void reading_off(struct goev__conn *c, uint32_t why)
{
    if (c->flags & GOEV__C_DRAIN)
        return;     /* closing: reads go on, and no one sees them */
    bool reading = !(c->flags & GOEV__C_NOREAD);
    c->flags |= why;
    if (reading && (c->flags & GOEV__C_OPEN) && !(c->flags & (GOEV__C_EOF | GOEV__C_CLOSE_WANT)))
        c->p->be->conn_pause(c);
}

int goev_pause_read(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM || (c->flags & GOEV__C_CLOSING))
        return -ENOTCONN;
    if (!(c->flags & GOEV__C_PAUSED))
        reading_off(c, GOEV__C_PAUSED);
    return 0;
}

/* Reading back on after a pause or a throttle, unless the other still
 * holds it off. */
static int reading_on(struct goev__conn *c)
{
    if (c->flags & GOEV__C_NOREAD)
        return 0;
    if (c->in_len)
        push_later(c);
    if ((c->flags & GOEV__C_OPEN) && !(c->flags & (GOEV__C_EOF | GOEV__C_CLOSE_WANT))) {
        int rc = c->p->be->conn_start(c);
        if (rc < 0) {
            goev__conn_close(c, rc);
            return rc;
        }
    }
    return 0;
}

int goev_resume_read(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM || (c->flags & GOEV__C_CLOSING))
        return -ENOTCONN;
    if (!(c->flags & GOEV__C_PAUSED))
        return 0;
    c->flags &= ~GOEV__C_PAUSED;
    return reading_on(c);
}

/* ---- output watermarks ----------------------------------------------------
 * A peer that sends requests and never reads their answers would make the
 * output queue grow without bound.  Past the high mark (checked at the end
 * of the pass, on what the kernel has not taken) the library stops reading
 * the connection; once the queue drains to the low mark it reads again.
 * This is independent of goev_pause_read: reading is on only when neither
 * holds it off. */
static void throttle(struct goev__conn *c)
{
    GOEV__STAT_INC(c->p, throttles);
    reading_off(c, GOEV__C_THROTTLED);
}

static inline uint32_t mark_of(size_t v)
{
    return v >= UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

int goev_set_watermarks(goev_handler *h, size_t high, size_t low)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM || (c->flags & GOEV__C_CLOSING))
        return -ENOTCONN;
    if (high == 0)
        high = SIZE_MAX;
    if (low >= high)
        return -EINVAL;
    c->out_high = mark_of(high);
    c->out_low = mark_of(low);
    if ((c->flags & GOEV__C_THROTTLED) && c->out.bytes <= c->out_low) {
        c->flags &= ~GOEV__C_THROTTLED;
        return reading_on(c);
    }
    if (!(c->flags & GOEV__C_THROTTLED) && c->out.bytes - c->out.inflight > c->out_high)
        throttle(c);
    return 0;
}

/* ---- output ------------------------------------------------------------ */

int goev_write(goev_handler *h, const void *data, size_t len)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (GOEV__UNLIKELY(!c || c->kind != GOEV__K_STREAM ||
                       (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT |
                                    GOEV__C_SHUT_WANT | GOEV__C_SHUT_DONE))))
        return -ENOTCONN;
    if (!len)
        return 0;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS))
        return goev__tls_write(c, data, len);
    int rc = goev__outq_append(&c->p->pool, &c->out, data, len);
    if (rc < 0)
        return rc;
    goev__mark_dirty(c);
    return 0;
}

int goev_sendfile(goev_handler *h, int fd, uint64_t offset, uint64_t len)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (GOEV__UNLIKELY(!c || c->kind != GOEV__K_STREAM ||
                       (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT |
                                    GOEV__C_SHUT_WANT | GOEV__C_SHUT_DONE))))
        return -ENOTCONN;
    if (fd < 0 || offset > INT64_MAX || len > INT64_MAX - offset)
        return -EINVAL;
    if (!len)
        return 0;
    struct stat st;
    GOEV__STAT_INC(c->p, sys_other);
    if (fstat(fd, &st) < 0)
        return -errno;
    /* sendfile and splice read regular files (and block devices) through
     * the page cache; a pipe or socket here is a caller's mistake. */
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return -EINVAL;
    if (S_ISREG(st.st_mode) && offset + len > (uint64_t)st.st_size)
        return -ENODATA;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS)) {
        int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        GOEV__STAT_INC(c->p, sys_other);
        return dup < 0 ? -errno : goev__tls_sendfile(c, dup, offset, len);
    }
    /* sendfile(2) and splice take a regular fd, not a direct descriptor. */
    int sock = goev__conn_fd(c);
    if (sock < 0)
        return sock;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    GOEV__STAT_INC(c->p, sys_other);
    if (own < 0)
        return -errno;
    int rc = goev__outq_append_file(&c->p->pool, &c->out, own, offset, len);
    if (rc < 0)
        return rc;
    goev__mark_dirty(c);
    return 0;
}

size_t goev_pending(const goev_handler *h)
{
    const struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c)
        return 0;
    return c->out.bytes + (GOEV__UNLIKELY(c->flags & GOEV__C_TLS) ? goev__tls_pending(c) : 0);
}

static void do_shutdown(struct goev__conn *c)
{
    c->flags |= GOEV__C_SHUT_DONE;
    c->flags &= ~GOEV__C_SHUT_WANT;
    /* A direct descriptor is not an fd: shutdown(2) needs a regular one
     * (rare enough, next to a connection's requests, to install it). */
    if (goev__conn_fd(c) < 0)
        return;
    shutdown(c->fd, SHUT_WR);
    GOEV__STAT_INC(c->p, sys_other);
}

int goev_shutdown(goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM ||
        (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT | GOEV__C_SHUT_DONE)))
        return -ENOTCONN;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS)) {
        /* close_notify first: goev__tls_flush queues it, on_sent shuts. */
        c->flags |= GOEV__C_SHUT_WANT;
        if (goev__tls_open(c))
            goev__mark_dirty(c);
        return 0;
    }
    if (c->out.bytes || !(c->flags & GOEV__C_OPEN))
        c->flags |= GOEV__C_SHUT_WANT;
    else
        do_shutdown(c);
    return 0;
}

void goev__on_sent(struct goev__conn *c, size_t n, bool blocked)
{
    GOEV__STAT_ADD(c->p, bytes_out, n);
    goev__outq_consume(&c->p->pool, &c->out, n);
    if (blocked)
        c->flags |= GOEV__C_BLOCKED;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_THROTTLED) && c->out.bytes <= c->out_low &&
        !(c->flags & GOEV__C_CLOSING)) {
        c->flags &= ~GOEV__C_THROTTLED;
        if (reading_on(c) < 0)
            return;
    }
    if (c->out.bytes || (c->flags & GOEV__C_CLOSING))
        return;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS) && goev__tls_busy(c, false)) {
        goev__mark_dirty(c);    /* the next slice of a file, or close_notify */
        return;
    }
    if (c->flags & GOEV__C_CLOSE_WANT) {
        if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS) && tls_linger(c))
            return;     /* the server's EOF, or the bound, closes */
        goev__conn_close(c, c->close_reason);
        return;
    }
    if (c->flags & GOEV__C_SHUT_WANT)
        do_shutdown(c);
    /* Also when the kernel took everything at once but the application has
     * paused reading: it paused on goev_pending(), and on_drained is how it
     * learns to resume (a loopback peer can take megabytes in one send). */
    if (c->flags & (GOEV__C_BLOCKED | GOEV__C_PAUSED)) {
        c->flags &= ~GOEV__C_BLOCKED;
        goev_handler *h = c->h;
        if (h->ops->on_drained)
            verdict(c, h->ops->on_drained(h));
    }
}

void goev__flush_dirty(goev_poller *p)
{
    struct goev__conn *c;
    while ((c = p->dirty)) {
        p->dirty = c->dirty_next;
        c->flags &= ~GOEV__C_DIRTY;
        if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS) &&
            (c->flags & (GOEV__C_OPEN | GOEV__C_CLOSING)) == GOEV__C_OPEN)
            goev__tls_flush(c);     /* may close c */
        if ((c->flags & (GOEV__C_OPEN | GOEV__C_CLOSING)) == GOEV__C_OPEN &&
            c->out.bytes > c->out.inflight) {
            p->be->flush(c);
            /* What the kernel has not taken (epoll) or been given (io_uring)
             * past the high mark: stop reading until it drains. */
            if (GOEV__UNLIKELY(c->out.bytes - c->out.inflight > c->out_high) &&
                !(c->flags & (GOEV__C_THROTTLED | GOEV__C_CLOSING)))
                throttle(c);
        }
    }
}

/* ---- opening ----------------------------------------------------------- */

/* The connection is up (accepted, adopted or connected): on_open, then read. */
static void opened(struct goev__conn *c)
{
    c->flags |= GOEV__C_OPEN;
    GOEV__STAT_INC(c->p, conns);
    if (GOEV__UNLIKELY(c->flags & GOEV__C_TLS)) {
        goev__tls_begin(c);     /* reads; goev__app_open once the handshake is done */
        return;
    }
    goev__app_open(c);
}

/* on_open, then reading (a TLS connection reads already: the backend
 * goes on, or is paused if on_open paused it), then what on_open wrote. */
void goev__app_open(struct goev__conn *c)
{
    goev_handler *h = c->h;
    bool tls = c->flags & GOEV__C_TLS;
    if (h->ops->on_open && !verdict(c, h->ops->on_open(h)))
        return;
    if (tls) {
        if (c->flags & (GOEV__C_SHUT_WANT | GOEV__C_CLOSE_WANT) || goev__tls_pending(c))
            goev__mark_dirty(c);
        if (c->in_len)
            push_later(c);
        return;
    }
    if (!(c->flags & (GOEV__C_NOREAD | GOEV__C_CLOSE_WANT))) {
        int rc = c->p->be->conn_start(c);
        if (rc < 0) {
            goev__conn_close(c, rc);
            return;
        }
    }
    if (c->out.bytes)
        goev__mark_dirty(c);
    else if (c->flags & GOEV__C_SHUT_WANT)
        do_shutdown(c);
}

int goev__adopt(goev_poller *p, goev_handler *h, int fd, bool set_nonblock, uint32_t cflags,
                goev_tls_ctx *tls)
{
    if (!h || !h->ops || !h->ops->on_read)
        return -EINVAL;
    if (set_nonblock) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return -errno;
        GOEV__STAT_ADD(p, sys_other, 2);
    }
    int err;
    struct goev__conn *c = attach(p, h, GOEV__K_STREAM, &err);
    if (!c)
        return err;
    c->fd = fd;
    c->flags |= cflags;
    if (tls && (err = goev__tls_attach(c, tls, NULL, NULL)) < 0) {
        c->fd = -1;
        c->flags &= ~cflags;
        detach(c);
        return err;
    }
    opened(c);
    return 0;
}

int goev_conn_open(goev_poller *p, goev_handler *h, int fd)
{
    if (!p || fd < 0)
        return -EINVAL;
    return goev__adopt(p, h, fd, true, 0, NULL);
}

/* ---- connector ----------------------------------------------------------- */

static int connect_timeout(goev_handler *ih, goev_timer *t)
{
    struct goev__conn *c = ih->user;
    (void)t;
    if (c->flags & GOEV__C_CONNECTING)
        goev__on_connected(c, -ETIMEDOUT);
    return 0;
}

static const struct goev_handler_ops connect_timer_ops = { .on_timeout = connect_timeout };

/* Arm c's connect timeout, in memory of its own: 0 or -ENOMEM. */
static int connecting_begin(struct goev__conn *c, uint64_t timeout_ms)
{
    size_t cap;
    /* A TLS connection has one in its TLS state already. */
    struct goev__connecting *cx = c->cx ? c->cx : goev__pool_get(&c->p->pool, GOEV__CONNECTING_BLOCK, &cap);
    if (!cx)
        return -ENOMEM;
    goev_timer_init(&cx->timer);
    goev_handler_init(&cx->ih, &connect_timer_ops);
    cx->ih.user = c;
    cx->ih.poller_ = c->p;
    c->cx = cx;
    return goev__timer_arm(c->p, &cx->ih, &cx->timer, timeout_ms);
}

void goev__on_connected(struct goev__conn *c, int err)
{
    if (!(c->flags & GOEV__C_CONNECTING) || (c->flags & GOEV__C_CLOSING))
        return;
    if (GOEV__UNLIKELY(c->flags & GOEV__C_RESOLVING) && goev__resolve_connected(c, err))
        return;     /* trying the name's next address */
    c->flags &= ~GOEV__C_CONNECTING;
    connecting_end(c);
    if (err) {
        /* Closing first keeps err as on_close's reason even if
         * on_connect_fail calls goev_close itself. */
        goev_handler *h = c->h;
        goev__conn_close(c, err);
        if (h->ops->on_connect_fail)
            h->ops->on_connect_fail(h, err);
        return;
    }
    opened(c);
}

void goev_connect_opts_init(struct goev_connect_opts *o)
{
    memset(o, 0, sizeof *o);
}

/* Socket options of a connection about to connect (before the handshake, so
 * that the receive buffer sizes the window scale). */
static int connect_sockopts(goev_poller *p, int fd, int family, const struct goev_connect_opts *o)
{
    int rc = 0;
    if (o->sndbuf > 0 && (rc = goev__sock_int(fd, SOL_SOCKET, SO_SNDBUF, o->sndbuf)) < 0)
        return rc;
    if (o->rcvbuf > 0 && (rc = goev__sock_int(fd, SOL_SOCKET, SO_RCVBUF, o->rcvbuf)) < 0)
        return rc;
    GOEV__STAT_ADD(p, sys_other, (o->sndbuf > 0) + (o->rcvbuf > 0));
    if (family == AF_UNIX)
        return 0;
    if (!o->no_nodelay) {
        goev__sock_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
        GOEV__STAT_INC(p, sys_other);
    }
    if (o->keepalive_idle) {
        GOEV__STAT_INC(p, sys_other);
        if ((rc = goev__sock_keepalive(fd, o->keepalive_idle, o->keepalive_interval,
                                       o->keepalive_count)) < 0)
            return rc;
    }
    return 0;
}

static int connect_bind(goev_poller *p, int fd, int family, const char *bind_addr)
{
    struct sockaddr_storage ls;
    socklen_t llen;
    int rc = goev__parse_addr(bind_addr, &ls, &llen);
    if (rc < 0)
        return rc;
    if (ls.ss_family != family)
        return -EINVAL;
    /* Port 0: take the port at connect time, per destination, instead of
     * reserving one at bind for every destination (which would run the
     * ephemeral range out with many connections from one address). */
    if (family != AF_UNIX) {
        uint16_t port = family == AF_INET6 ? ((struct sockaddr_in6 *)&ls)->sin6_port
                                           : ((struct sockaddr_in *)&ls)->sin_port;
        if (!port) {
            goev__sock_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
            GOEV__STAT_INC(p, sys_other);
        }
    }
    GOEV__STAT_INC(p, sys_other);
    if (bind(fd, (struct sockaddr *)&ls, llen) < 0)
        return -errno;
    return 0;
}

/* A non-blocking stream socket for family, with the options set and bound
 * to o->bind_addr: the fd, or a negative errno. */
static int connect_socket(goev_poller *p, int family, const struct goev_connect_opts *o)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    GOEV__STAT_INC(p, sys_other);
    if (fd < 0)
        return -errno;
    int rc = connect_sockopts(p, fd, family, o);
    if (rc == 0 && o->bind_addr)
        rc = connect_bind(p, fd, family, o->bind_addr);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

int goev__connect_attempt(struct goev__conn *c, const struct sockaddr *sa, socklen_t len,
                          const struct goev_connect_opts *o)
{
    int fd = connect_socket(c->p, sa->sa_family, o);
    if (fd < 0)
        return fd;
    c->fd = fd;
    int rc = c->p->be->connect(c, sa, len);
    if (rc < 0) {
        c->fd = -1;
        close(fd);
    }
    return rc;
}

/* A client TLS layer for c, if o asks for one: the name to send and verify
 * is o's, else the host of "host:port" (name), else the numeric address's
 * IP (ss).  0 or -ENOMEM. */
static int connect_tls(struct goev__conn *c, const struct goev_connect_opts *o, const char *name,
                       const struct sockaddr_storage *ss)
{
    if (!o->tls)
        return 0;
    if (o->tls_server_name)
        return goev__tls_attach(c, o->tls, o->tls_server_name, NULL);
    char host[256];
    if (name) {
        const char *colon = strrchr(name, ':');
        size_t n = colon ? (size_t)(colon - name) : strlen(name);
        if (n >= sizeof host)
            n = sizeof host - 1;
        memcpy(host, name, n);
        host[n] = 0;
        return goev__tls_attach(c, o->tls, host, NULL);
    }
    const void *a = NULL;
    if (ss->ss_family == AF_INET)
        a = &((const struct sockaddr_in *)(const void *)ss)->sin_addr;
    else if (ss->ss_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr;
    if (!a || !inet_ntop(ss->ss_family, a, host, sizeof host))
        return goev__tls_attach(c, o->tls, NULL, NULL);     /* unix: nothing to check */
    return goev__tls_attach(c, o->tls, NULL, host);
}

/* "host:port": the slot connects while resolve.c looks the name up. */
static int connect_by_name(goev_poller *p, goev_handler *h, const char *addr,
                           const struct goev_connect_opts *opts)
{
    int rc = goev__name_check(addr);
    if (rc < 0)
        return rc;
    struct goev__conn *c = attach(p, h, GOEV__K_STREAM, &rc);
    if (!c)
        return rc;
    c->flags |= GOEV__C_CONNECTING;
    rc = connect_tls(c, opts, addr, NULL);
    if (rc == 0 && opts->timeout_ms > 0)
        rc = connecting_begin(c, (uint64_t)opts->timeout_ms);
    if (rc == 0)
        rc = goev__resolve_start(c, addr, opts);
    if (rc < 0) {
        connecting_end(c);
        detach(c);
    }
    return rc;
}

int goev_connect_ex(goev_poller *p, goev_handler *h, const char *addr,
                    const struct goev_connect_opts *opts)
{
    struct goev_connect_opts defaults;
    struct sockaddr_storage ss;
    socklen_t len;
    if (!p || !h || !h->ops || !h->ops->on_read)
        return -EINVAL;
    if (opts && opts->tls && goev__tls_ctx_server(opts->tls))
        return -EINVAL;     /* a server context cannot connect */
    if (!opts) {
        goev_connect_opts_init(&defaults);
        opts = &defaults;
    }
    int rc = goev__parse_addr(addr, &ss, &len);
    if (rc < 0)
        return addr ? connect_by_name(p, h, addr, opts) : rc;
    int fd = connect_socket(p, ss.ss_family, opts);
    if (fd < 0)
        return fd;
    struct goev__conn *c = attach(p, h, GOEV__K_STREAM, &rc);
    if (!c) {
        close(fd);
        return rc;
    }
    c->fd = fd;
    c->flags |= GOEV__C_CONNECTING;
    /* The timeout first: a connect whose timeout cannot be armed would
     * wait forever, so it is refused instead. */
    rc = connect_tls(c, opts, NULL, &ss);
    if (rc == 0 && opts->timeout_ms > 0)
        rc = connecting_begin(c, (uint64_t)opts->timeout_ms);
    if (rc == 0)
        rc = p->be->connect(c, (struct sockaddr *)&ss, len);
    if (rc < 0) {
        connecting_end(c);
        detach(c);
        close(fd);
        return rc;
    }
    return 0;
}

int goev_connect(goev_poller *p, goev_handler *h, const char *addr, int timeout_ms)
{
    struct goev_connect_opts o;
    goev_connect_opts_init(&o);
    o.timeout_ms = timeout_ms;
    return goev_connect_ex(p, h, addr, &o);
}

/* ---- raw watches --------------------------------------------------------- */

void goev__on_ready(struct goev__conn *c, unsigned events)
{
    if (c->flags & GOEV__C_CLOSING)
        return;
    if (c->flags & GOEV__C_SIGNAL) {
        goev__signals_ready(c);
        return;
    }
    goev_handler *h = c->h;
    verdict(c, h->ops->on_ready(h, events));
}

int goev__watch(goev_poller *p, goev_handler *h, int fd, unsigned events, uint32_t flags)
{
    int rc;
    struct goev__conn *c = attach(p, h, GOEV__K_WATCH, &rc);
    if (!c)
        return rc;
    c->fd = fd;
    c->flags |= GOEV__C_OPEN | flags;
    c->watch_events = (uint8_t)events;
    rc = p->be->watch(c, c->watch_events);
    if (rc < 0) {
        detach(c);
        return rc;
    }
    return 0;
}

int goev_watch(goev_poller *p, goev_handler *h, int fd, unsigned events)
{
    if (!p || !h || !h->ops || !h->ops->on_ready || fd < 0 ||
        (events & ~(GOEV_READ | GOEV_WRITE | GOEV_WATCH_KEEP_FD)))
        return -EINVAL;
    return goev__watch(p, h, fd, events & (GOEV_READ | GOEV_WRITE),
                       (events & GOEV_WATCH_KEEP_FD) ? GOEV__C_KEEP_FD : 0);
}

int goev_watch_update(goev_handler *h, unsigned events)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_WATCH || (c->flags & GOEV__C_CLOSING) ||
        (events & ~(GOEV_READ | GOEV_WRITE)))
        return -EINVAL;
    if (events == c->watch_events)
        return 0;
    c->watch_events = (uint8_t)events;
    return c->p->be->watch(c, events);
}

/* ---- timers ------------------------------------------------------------ */

void goev_timer_init(goev_timer *t)
{
    memset(t, 0, sizeof *t);
    t->idx_ = UINT32_MAX;
}

int goev_timer_active(const goev_timer *t)
{
    return t->idx_ != UINT32_MAX;
}

static void timer_unlink(goev_timer *t)
{
    goev_handler *h = t->h_;
    if (t->prev_)
        t->prev_->next_ = t->next_;
    else if (h && h->timers_ == t)
        h->timers_ = t->next_;
    if (t->next_)
        t->next_->prev_ = t->prev_;
    t->prev_ = t->next_ = NULL;
}

int goev_timer_cancel(goev_timer *t)
{
    if (!t || t->idx_ == UINT32_MAX)
        return 0;
    goev__heap_remove(&t->h_->poller_->timers, t);
    timer_unlink(t);
    return 0;
}

/* Internal timers (connect timeout, accept back-off): in the heap, but on
 * no handler's list, with a private handler whose on_timeout is ours.
 * Returns 0 or -ENOMEM (the heap could not grow): the caller must not wait
 * for a timer that will never fire. */
int goev__timer_arm(goev_poller *p, goev_handler *ih, goev_timer *t, uint64_t delay_ms)
{
    goev_timer_cancel(t);
    goev__clock_refresh(p);
    t->h_ = ih;
    t->period_ = 0;
    t->when_ = goev__deadline(p->now_ms, delay_ms);
    if (goev__heap_push(&p->timers, t) < 0) {
        t->idx_ = UINT32_MAX;
        return -ENOMEM;
    }
    return 0;
}

int goev_timer_start(goev_poller *p, goev_handler *h, goev_timer *t,
                     uint64_t delay_ms, uint64_t period_ms)
{
    if (!p || !h || !t || !h->ops || !h->ops->on_timeout)
        return -EINVAL;
    if (h->conn_ && h->poller_ != p)
        return -EINVAL;
    if (h->conn_ && (h->conn_->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT)))
        return -EINVAL;
    goev_timer_cancel(t);
    bool fresh = !h->conn_;
    if (fresh && !slot_alloc(p, h))
        return -ENOMEM;
    goev__clock_refresh(p);
    t->h_ = h;
    t->period_ = period_ms;
    t->when_ = goev__deadline(p->now_ms, delay_ms);
    if (goev__heap_push(&p->timers, t) < 0) {
        t->idx_ = UINT32_MAX;
        if (fresh && !h->timers_)   /* a failed call leaves h as it was */
            detach(h->conn_);
        return -ENOMEM;
    }
    t->prev_ = NULL;
    t->next_ = h->timers_;
    if (h->timers_)
        h->timers_->prev_ = t;
    h->timers_ = t;
    return 0;
}

/* Fire what has expired.  At most as many callbacks as there were timers on
 * entry, so that a zero-delay timer re-armed from its own callback waits for
 * the next pass instead of spinning here. */
void goev__run_timers(goev_poller *p)
{
    uint32_t budget = p->timers.n;
    while (budget-- && p->timers.n && goev__heap_top_when(&p->timers) <= p->now_ms) {
        goev_timer *t = goev__heap_pop(&p->timers);
        goev_handler *h = t->h_;
        if (t->period_) {
            /* Next period from the deadline, not from now, so a periodic
             * timer does not drift; but never into the past (after a long
             * pass it skips the periods it missed), and a period too long
             * for the clock means never again.  The push cannot fail: the
             * timer just left the heap. */
            uint64_t next = goev__deadline(t->when_, t->period_);
            t->when_ = next > p->now_ms ? next : goev__deadline(p->now_ms, t->period_);
            int rc = goev__heap_push(&p->timers, t);
            goev__assert(rc == 0);
            (void)rc;
        } else {
            timer_unlink(t);
        }
        /* h may be gone once on_timeout returns 0: a connect timeout's
         * internal handler is freed inside its callback (connecting_end). */
        int rc = h->ops->on_timeout(h, t);
        if (rc < 0 && h->conn_)
            goev__conn_close(h->conn_, rc);
    }
}
