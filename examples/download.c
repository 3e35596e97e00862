/* download.c - a static file server on goev: the files of one directory
 * over HTTP/1.1 keep-alive, their bytes sent with goev_sendfile (from the
 * page cache to the socket, never through this process's memory).
 *
 *   examples/download -p PORT [-t POLLERS] -d DIR [-b BYTES_PER_SEC] [-r] [-s]
 *
 * -d DIR   the directory served: GET /a/b answers with the file DIR/a/b.
 * -b RATE  pace each download at RATE bytes per second.  (The issue asked
 *          for -r RATE, but -r is already every example's SO_REUSEPORT
 *          flag - see serve.h - so the rate is -b.)  SIGUSR1 doubles the
 *          rate and SIGUSR2 halves it, for every poller and for downloads
 *          already running; each change prints "rate=N" on stderr.
 * -p, -t, -r, -s as for every example: -p 0 picks a free port, printed as
 * "listening on PORT backend=NAME" on stderr.  SIGINT/SIGTERM stop the
 * server, which then exits with status 0.
 *
 * HTTP
 *   GET and HEAD (others: 405).  200 with Content-Length, Content-Type:
 *   application/octet-stream, Last-Modified and Accept-Ranges: bytes.
 *   One byte range (Range: bytes=a-b, bytes=a-, bytes=-n) gives 206 with
 *   Content-Range; a range that starts past the end gives 416 whose
 *   Content-Range is "bytes", a star, "/SIZE" (RFC 9110 14.4; spelled out
 *   because the two characters would end this comment).  Several ranges,
 *   another unit, or a
 *   malformed value are ignored (200 with the whole file: RFC 9110 14.2
 *   lets a server ignore Range), as is a Range whose If-Range does not
 *   match the file's Last-Modified.  Missing files and directories: 404.
 *   Malformed requests: 400 (431, 413, 501 from the parser), then the
 *   connection closes, since the rest of its byte stream cannot be framed
 *   any more.  Pipelined requests are answered in order.
 *
 * PATHS
 *   No request reaches outside DIR.  The path is percent-decoded (a bad
 *   escape or %00 is a 400), split on '/', and any ".." segment is refused
 *   (403) before the file system is asked; the file is then opened with
 *   openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) relative to a
 *   descriptor of DIR taken at start, so absolute paths and symlinks whose
 *   target lies outside DIR fail too (the kernel says EXDEV: 403), while
 *   symlinks that stay inside DIR work.  Kernels without openat2 (before
 *   5.6, or a seccomp filter that refuses it) get an equivalent walk: see
 *   open_walk.  GOEV_DOWNLOAD_NO_OPENAT2=1 forces that walk (for tests).
 *
 * MEMORY
 *   A connection holds no file data: a whole response is one header write
 *   and one goev_sendfile of the range (the library keeps a duplicate
 *   descriptor and an offset), so serving a 1 GiB file to a slow client
 *   costs what serving 1 KiB does.  Pipelined requests are answered only
 *   while less than HIGH_WATER bytes and MAX_FILES ranges are queued on the
 *   connection; past that reading pauses (TCP pushes back on the client)
 *   until the queue goes down.  That bounds both memory and descriptors
 *   per connection.
 *
 * PACING (-b)
 *   A paced connection keeps the file open and a periodic timer (PACE_MS)
 *   queues the next slice (rate * PACE_MS / 1000 bytes) with goev_sendfile
 *   only when the previous one has left: nothing is pending in goev, and
 *   the kernel's send queue (SIOCOUTQ: bytes not yet acknowledged) holds
 *   less than half a slice.  A slow client therefore has about one slice in
 *   flight, not a full socket buffer.  The rate lives in each poller's
 *   local storage (slot SLOT_RATE); a signal on poller 0 computes the new
 *   rate and goev_broadcast stores it on every poller, where the timers
 *   read it at their next tick. */
#include "goev.h"
#include "serve.h"
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PACE_MS 100             /* pacing tick */
#define HIGH_WATER (256u << 10) /* answer no further request past this many queued bytes */
#define MAX_FILES 16            /* ... or this many queued file ranges (descriptors) */
#define LINGER_MS 2000         /* reading on after our FIN, for the client's */
#define SLOT_RATE 0             /* poller-local slot: the rate, as a uintptr_t */
#define RATE_MAX ((uint64_t)1 << 40)
#define HDR_MAX 1024            /* room for any response head */

/* Set up in main before the pollers run, read-only afterwards. */
static struct {
    int dirfd;                  /* O_PATH | O_DIRECTORY descriptor of DIR */
    char *dir_real;             /* realpath of DIR (fallback walk only) */
    bool openat2;               /* the kernel has openat2 */
    bool paced;                 /* -b given */
    uint64_t rate;              /* -b value; later owned by poller 0's signal handler */
    goev_reactor *r;
} srv = { .dirfd = -1 };

struct conn {
    goev_handler h;
    goev_timer pace;            /* -b: the next slice of the body, every PACE_MS */
    goev_timer wake;            /* lingering close: how long to wait for the client */
    /* The paced body in progress: its own descriptor (closed in on_close if
     * the connection ends first), offset and what is left; -1 if none. */
    int body_fd;
    uint64_t body_off, body_left;
    bool paused;                /* we paused reading (queue full or body in progress) */
    bool eof;                   /* the client half-closed */
    bool close_after;           /* "Connection: close": close once the body is queued */
    bool closing;               /* we are ending it (conn_close): answer nothing more */
    size_t tail;                /* bytes left unconsumed by the last on_read */
    /* Every byte queued so far, and where each file range still queued
     * ends in that count: with goev_pending this tells how many of our
     * ranges (each a descriptor in goev) are still waiting. */
    uint64_t queued;
    uint64_t file_end[MAX_FILES];
    unsigned fhead, fcount;
};

static struct conn *conn_of(goev_handler *h)
{
    return (struct conn *)((char *)h - offsetof(struct conn, h));
}

/* ---- the output queue ----------------------------------------------------- */

static int q_write(struct conn *c, const void *d, size_t n)
{
    int rc = goev_write(&c->h, d, n);
    if (rc == 0)
        c->queued += n;
    return rc;
}

static int q_file(struct conn *c, int fd, uint64_t off, uint64_t len)
{
    if (!len)
        return 0;
    int rc = goev_sendfile(&c->h, fd, off, len);
    if (rc < 0)
        return rc;
    c->queued += len;
    /* Callers check files_queued() < MAX_FILES first, so the ring has room;
     * were it full, forgetting the oldest would only loosen the bound. */
    if (c->fcount == MAX_FILES) {
        c->fhead = (c->fhead + 1) % MAX_FILES;
        c->fcount--;
    }
    c->file_end[(c->fhead + c->fcount) % MAX_FILES] = c->queued;
    c->fcount++;
    return 0;
}

static unsigned files_queued(struct conn *c)
{
    uint64_t gone = c->queued - goev_pending(&c->h);
    while (c->fcount && c->file_end[c->fhead] <= gone) {
        c->fhead = (c->fhead + 1) % MAX_FILES;
        c->fcount--;
    }
    return c->fcount;
}

/* May the next pipelined request be answered now? */
static bool can_answer(struct conn *c)
{
    return c->body_fd < 0 && goev_pending(&c->h) <= HIGH_WATER && files_queued(c) < MAX_FILES;
}

/* End the connection from our side as RFC 9112 9.6 asks: send what is
 * queued, then a FIN (goev_shutdown), and go on reading - and discarding -
 * until the client closes too, or the queue has been empty for LINGER_MS.
 * Closing the socket at once while input is still arriving (pipelined
 * requests after a "Connection: close" one, the rest of a malformed head)
 * would make the kernel answer with a reset, which can destroy the
 * response before the client has read it. */
static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    goev_timer_cancel(&c->wake);
    if (c->eof || goev_shutdown(&c->h) < 0) {
        goev_close(&c->h);      /* graceful: what is queued is sent first */
        return;
    }
    if (c->paused) {
        c->paused = false;
        goev_resume_read(&c->h);
    }
    goev_timer_start(goev_handler_poller(&c->h), &c->h, &c->wake, LINGER_MS, 0);
}

/* Move on after the queue went down, a body finished or input ended:
 * resume reading if it was paused and the queue allows; close if the
 * client has half-closed and nothing it sent is left to answer.  While
 * the queue is still too full, wait: goev calls on_drained for a paused
 * connection when its queue empties. */
static void progress(struct conn *c)
{
    if (c->closing || c->body_fd >= 0)
        return;                 /* a paced body calls again when it is done */
    if (c->paused) {
        if (!can_answer(c))
            return;
        c->paused = false;
        /* The kept tail, if any, comes back through on_read, which calls
         * progress again at its end. */
        goev_resume_read(&c->h);
        if (c->tail)
            return;
    }
    if (c->eof)
        conn_close(c);          /* what is left of the input is an incomplete request */
}

/* Stop answering until progress() says the queue allows it. */
static void wait_for_queue(struct conn *c)
{
    if (!c->paused && goev_pause_read(&c->h) == 0)
        c->paused = true;
}

/* ---- responses ------------------------------------------------------------ */

/* The header block every response shares; returns its length (0 if it did
 * not fit, which the fixed formats below never cause). */
static size_t head_start(char *buf, size_t cap, int status, const struct http_req *rq, bool close)
{
    char date[HTTP_DATE_LEN + 1];
    http_date(time(NULL), date);
    /* An HTTP/1.0 client closes unless told otherwise. */
    const char *conn_hdr = close ? "Connection: close\r\n"
                         : rq && rq->minor == 0 ? "Connection: keep-alive\r\n" : "";
    int n = snprintf(buf, cap, "HTTP/1.1 %d %s\r\nServer: goev-download\r\nDate: %s\r\n%s",
                     status, http_status_reason(status), date, conn_hdr);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* A short text answer (errors, 416).  rq is NULL when the request could not
 * be parsed.  Returns 1 if the connection is closing, 0 or < 0 (error). */
static int reply_text(struct conn *c, const struct http_req *rq, int status, const char *extra,
                      bool close)
{
    char buf[HDR_MAX];
    char body[64];
    int blen = snprintf(body, sizeof body, "%d %s\n", status, http_status_reason(status));
    size_t n = head_start(buf, sizeof buf, status, rq, close);
    int m = snprintf(buf + n, sizeof buf - n,
                     "%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
                     extra ? extra : "", blen,
                     rq && rq->method_id == HTTP_REQ_HEAD ? "" : body);
    if (!n || m < 0 || (size_t)m >= sizeof buf - n)
        return -EINVAL;
    int rc = q_write(c, buf, n + (size_t)m);
    if (rc < 0)
        return rc;
    if (close) {
        conn_close(c);
        return 1;
    }
    return 0;
}

/* The request path, percent-decoded and split into segments, as a path
 * relative to DIR in out (NUL-terminated).  Returns 0, or the status to
 * answer: 400 for a bad escape or an encoded NUL (it would cut the name
 * short behind our back), 403 for a ".." segment (a request to leave
 * DIR: refused before the file system sees it, whatever lies there), 404
 * for a name that can only be a directory (DIR itself, a trailing '/', a
 * last "." segment) or is too long to be a file's.  Empty and "."
 * segments are dropped, so "//etc/passwd" is DIR/etc/passwd. */
static int map_path(const char *p, size_t n, char *out, size_t cap)
{
    char dec[HTTP_REQ_MAX_HEAD];
    size_t dl = 0;
    if (n == 0 || p[0] != '/' || n > sizeof dec)
        return n > sizeof dec ? 404 : 400;  /* not origin-form ("*") */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '%') {
            int v = 0;
            if (n - i < 3)
                return 400;
            for (int k = 1; k <= 2; k++) {
                unsigned char x = (unsigned char)p[i + k];
                int d = x >= '0' && x <= '9' ? x - '0'
                      : x >= 'a' && x <= 'f' ? x - 'a' + 10
                      : x >= 'A' && x <= 'F' ? x - 'A' + 10 : -1;
                if (d < 0)
                    return 400;
                v = v * 16 + d;
            }
            if (v == 0)
                return 400;
            ch = (unsigned char)v;
            i += 2;
        }
        dec[dl++] = (char)ch;
    }
    if (dec[dl - 1] == '/')
        return 404;
    size_t o = 0;
    for (size_t i = 0; i < dl;) {
        while (i < dl && dec[i] == '/')
            i++;
        size_t s = i;
        while (i < dl && dec[i] != '/')
            i++;
        size_t len = i - s;
        if (len == 0)
            break;
        if (len == 2 && dec[s] == '.' && dec[s + 1] == '.')
            return 403;
        if (len == 1 && dec[s] == '.') {
            if (i == dl)
                return 404;
            continue;
        }
        if (o + 1 + len + 1 > cap)
            return 404;
        if (o)
            out[o++] = '/';
        memcpy(out + o, dec + s, len);
        o += len;
    }
    if (!o)
        return 404;
    out[o] = '\0';
    return 0;
}

/* Open flags of the served file.  O_NONBLOCK: a FIFO in DIR must not block
 * the poller in open(2) waiting for a writer (it is then refused as not a
 * regular file); for a regular file the flag changes nothing. */
#define FILE_FLAGS (O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)

/* Without openat2: resolve the whole path with realpath (which follows
 * every symlink), check that the result lies under DIR, then open that
 * symlink-free path one component at a time from DIR's descriptor with
 * O_NOFOLLOW.  The check alone would race with a rename or a new symlink
 * between realpath and open; the walk closes that window - a component
 * that has become a symlink since makes it fail (ELOOP or ENOTDIR) instead
 * of being followed out of DIR.  Returns a descriptor or a negative errno. */
static int open_walk(const char *rel)
{
    char abs[PATH_MAX], res[PATH_MAX];
    int n = snprintf(abs, sizeof abs, "%s/%s", srv.dir_real, rel);
    if (n < 0 || (size_t)n >= sizeof abs)
        return -ENAMETOOLONG;
    if (!realpath(abs, res))
        return -errno;
    size_t dl = strlen(srv.dir_real);
    const char *sub;
    if (dl == 1)                                    /* DIR is "/" */
        sub = res + 1;
    else if (!strncmp(res, srv.dir_real, dl) && res[dl] == '/')
        sub = res + dl + 1;
    else if (!strcmp(res, srv.dir_real))
        return -EISDIR;
    else
        return -EXDEV;                              /* as openat2 says */
    if (!*sub)
        return -EISDIR;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", sub);
    int cur = srv.dirfd;
    for (char *comp = path;;) {
        char *slash = strchr(comp, '/');
        if (slash)
            *slash = '\0';
        int fd = openat(cur, comp, slash ? O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
                                         : FILE_FLAGS | O_NOFOLLOW);
        int err = errno;
        if (cur != srv.dirfd)
            close(cur);
        if (fd < 0)
            return -err;
        if (!slash)
            return fd;
        cur = fd;
        comp = slash + 1;
    }
}

static int open_beneath(const char *rel)
{
    if (!srv.openat2)
        return open_walk(rel);
    struct open_how how = {
        .flags = FILE_FLAGS,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd;
    do
        fd = syscall(SYS_openat2, srv.dirfd, rel, &how, sizeof how);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : (int)fd;
}

/* The status for an open that failed. */
static int open_status(int err)
{
    switch (err) {
    case -ENOENT: case -ENOTDIR: case -ENAMETOOLONG: case -EISDIR:
        return 404;
    case -EXDEV:        /* a symlink (or "..") leading out of DIR */
    case -ELOOP:        /* a magic link, a symlink loop, or (walk) a symlink raced in */
    case -EACCES: case -EPERM:
        return 403;     /* the name exists in DIR but is not served */
    case -EMFILE: case -ENFILE: case -ENOMEM:
        return 503;     /* out of descriptors: the client may retry */
    default:
        return 500;
    }
}

/* A byte range of Range's value v (n bytes) for a file of size bytes. */
enum { RANGE_NONE, RANGE_OK, RANGE_UNSAT };

static const char *digits(const char *p, const char *end, uint64_t *v, bool *any)
{
    *v = 0;
    *any = false;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        /* Saturate: a position past 2^64 is past any file's end. */
        *v = *v > (UINT64_MAX - d) / 10 ? UINT64_MAX : *v * 10 + d;
        *any = true;
    }
    return p;
}

static int parse_range(const char *v, size_t n, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (n < 6 || strncasecmp(v, "bytes=", 6) != 0)
        return RANGE_NONE;                  /* another unit */
    const char *p = v + 6, *end = v + n;
    if (memchr(p, ',', (size_t)(end - p)))
        return RANGE_NONE;                  /* several ranges: we send the whole */
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    uint64_t a, b;
    bool has_a, has_b;
    p = digits(p, end, &a, &has_a);
    if (p == end || *p != '-')
        return RANGE_NONE;
    p = digits(p + 1, end, &b, &has_b);
    if (p != end || (!has_a && !has_b))
        return RANGE_NONE;
    if (has_a) {
        if (has_b && b < a)
            return RANGE_NONE;              /* invalid: the header is ignored */
        if (a >= size)
            return RANGE_UNSAT;
        *first = a;
        *last = has_b && b < size - 1 ? b : size - 1;
    } else {                                /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return RANGE_UNSAT;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
    }
    return RANGE_OK;
}

static uint64_t rate_here(struct conn *c)
{
    return (uint64_t)(uintptr_t)goev_poller_local(goev_handler_poller(&c->h), SLOT_RATE);
}

static void body_done(struct conn *c)
{
    close(c->body_fd);
    c->body_fd = -1;
    goev_timer_cancel(&c->pace);
    if (c->close_after)
        conn_close(c);
    else
        progress(c);
}

/* Queue the next slice of the paced body. */
static int pace_slice(struct conn *c)
{
    uint64_t slice = rate_here(c) * PACE_MS / 1000;
    if (!slice)
        slice = 1;
    uint64_t n = c->body_left < slice ? c->body_left : slice;
    int rc = q_file(c, c->body_fd, c->body_off, n);
    if (rc < 0)
        return rc;
    c->body_off += n;
    c->body_left -= n;
    if (!c->body_left)
        body_done(c);
    return 0;
}

/* Bytes in the kernel's send queue not yet acknowledged (0 if unknown). */
static uint64_t kernel_unsent(struct conn *c)
{
    int v = 0;
    /* goev_handler_fd_install: a regular fd also on an io_uring direct
     * descriptor (installed once; goev_handler_fd would say -1). */
    int fd = goev_handler_fd_install(&c->h);
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &v) < 0 || v < 0)
        return 0;
    return (uint64_t)v;
}

static int pace_tick(struct conn *c)
{
    if (c->body_fd < 0) {
        goev_timer_cancel(&c->pace);
        return 0;
    }
    uint64_t slice = rate_here(c) * PACE_MS / 1000;
    /* The previous slice has not left yet: skip this tick, so a slow
     * client slows the download instead of filling buffers. */
    if (goev_pending(&c->h) > 0 || kernel_unsent(c) * 2 > slice)
        return 0;
    return pace_slice(c);
}

/* Answer one parsed request.  Returns 0, 1 if the connection is closing
 * (stop reading requests), or < 0 to close it now. */
static int answer(struct conn *c, const struct http_req *rq)
{
    bool closes = !rq->keep_alive;
    if (rq->method_id != HTTP_REQ_GET && rq->method_id != HTTP_REQ_HEAD)
        return reply_text(c, rq, 405, "Allow: GET, HEAD\r\n", closes);
    char rel[PATH_MAX];
    int st = map_path(rq->path, rq->path_len, rel, sizeof rel);
    if (st)
        return reply_text(c, rq, st, NULL, closes || st == 400);
    int fd = open_beneath(rel);
    if (fd < 0)
        return reply_text(c, rq, open_status(fd), NULL, closes);
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return reply_text(c, rq, 404, NULL, closes);     /* directories, FIFOs, devices */
    }
    uint64_t size = (uint64_t)sb.st_size, first = 0, last = size ? size - 1 : 0;
    char lastmod[HTTP_DATE_LEN + 1];
    http_date(sb.st_mtim.tv_sec, lastmod);

    /* Range applies to GET only (RFC 9110 14.2), and with If-Range only if
     * its validator is our Last-Modified exactly (we send no ETag, so an
     * entity-tag never matches). */
    int range = RANGE_NONE;
    size_t vlen, ilen;
    const char *v = rq->method_id == HTTP_REQ_GET ? http_req_field(rq, "Range", &vlen) : NULL;
    const char *ir = v ? http_req_field(rq, "If-Range", &ilen) : NULL;
    if (v && (!ir || (ilen == HTTP_DATE_LEN && !memcmp(ir, lastmod, HTTP_DATE_LEN))))
        range = parse_range(v, vlen, size, &first, &last);
    if (range == RANGE_UNSAT) {
        close(fd);
        char cr[64];
        snprintf(cr, sizeof cr, "Content-Range: bytes */%llu\r\n", (unsigned long long)size);
        return reply_text(c, rq, 416, cr, closes);
    }

    char buf[HDR_MAX];
    int status = range == RANGE_OK ? 206 : 200;
    uint64_t len = size ? last - first + 1 : 0;
    size_t n = head_start(buf, sizeof buf, status, rq, closes);
    int m = 0;
    if (n && status == 206)
        m = snprintf(buf + n, sizeof buf - n, "Content-Range: bytes %llu-%llu/%llu\r\n",
                     (unsigned long long)first, (unsigned long long)last,
                     (unsigned long long)size);
    if (n && m >= 0 && (size_t)m < sizeof buf - n) {
        n += (size_t)m;
        m = snprintf(buf + n, sizeof buf - n,
                     "Content-Type: application/octet-stream\r\nContent-Length: %llu\r\n"
                     "Last-Modified: %s\r\nAccept-Ranges: bytes\r\n\r\n",
                     (unsigned long long)len, lastmod);
    }
    if (!n || m < 0 || (size_t)m >= sizeof buf - n) {
        close(fd);
        return -EINVAL;
    }
    int rc = q_write(c, buf, n + (size_t)m);
    if (rc < 0 || rq->method_id == HTTP_REQ_HEAD || !len) {
        close(fd);
    } else if (!srv.paced) {
        /* The whole range at once: goev keeps its own duplicate of fd. */
        rc = q_file(c, fd, first, len);
        close(fd);
    } else {
        c->body_fd = fd;
        c->body_off = first;
        c->body_left = len;
        rc = pace_slice(c);     /* the first slice now, the next ones per tick */
        if (rc == 0 && c->body_fd >= 0)
            rc = goev_timer_start(goev_handler_poller(&c->h), &c->h, &c->pace, PACE_MS, PACE_MS);
    }
    /* An error here comes after the head promised a length: the connection
     * cannot go on (the caller closes it). */
    if (rc < 0)
        return rc;
    if (closes) {
        if (c->body_fd >= 0)
            c->close_after = true;
        else
            conn_close(c);
        return 1;
    }
    return 0;
}

/* ---- connection callbacks --------------------------------------------------- */

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = conn_of(h);
    if (c->closing)
        return (ssize_t)len;    /* lingering after our FIN: discard */
    size_t off = 0;
    while (off < len && !c->closing) {
        if (!can_answer(c)) {
            /* Keep the rest for later: goev presents it again when reading
             * resumes. */
            wait_for_queue(c);
            break;
        }
        struct http_req rq;
        ssize_t n = http_req_parse(data + off, len - off, &rq);
        if (n == 0)
            break;                  /* incomplete: goev keeps the tail */
        if (n < 0) {
            /* After a malformed request the stream cannot be framed any
             * more: answer and close, dropping whatever follows. */
            int rc = reply_text(c, NULL, (int)-n, NULL, true);
            if (rc < 0)
                return rc;
            off = len;
            break;
        }
        off += (size_t)n;
        int rc = answer(c, &rq);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            off = len;
            break;
        }
    }
    c->tail = len - off;
    progress(c);
    return (ssize_t)off;
}

static int on_eof(goev_handler *h)
{
    struct conn *c = conn_of(h);
    /* Stay half-open: a paced body or pipelined requests kept while the
     * queue was full are still to be answered; progress closes when they
     * are. */
    c->eof = true;
    if (c->closing)
        goev_close(h);          /* the end of a lingering close */
    else
        progress(c);
    return 0;
}

static int on_drained(goev_handler *h)
{
    progress(conn_of(h));
    return 0;
}

static int on_timeout(goev_handler *h, goev_timer *t)
{
    struct conn *c = conn_of(h);
    if (t == &c->pace)
        return pace_tick(c);
    /* The lingering close's timer: the client has not closed.  Give it
     * LINGER_MS more after the last byte has left, then close. */
    if (goev_pending(h) > 0)
        goev_timer_start(goev_handler_poller(h), h, &c->wake, LINGER_MS, 0);
    else
        goev_close(h);
    return 0;
}

static void on_close(goev_handler *h, int reason)
{
    struct conn *c = conn_of(h);
    if (c->body_fd >= 0)
        close(c->body_fd);
    free(c);
}

static const struct goev_handler_ops conn_ops = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drained = on_drained,
    .on_timeout = on_timeout,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &conn_ops);
    goev_timer_init(&c->pace);
    goev_timer_init(&c->wake);
    c->body_fd = -1;
    return &c->h;
}

/* ---- the rate: SIGUSR1 doubles, SIGUSR2 halves ---------------------------------- */

static void set_rate(goev_poller *p, void *arg)
{
    goev_poller_set_local(p, SLOT_RATE, arg);
}

static int on_signal(goev_handler *h, const struct goev_siginfo *si)
{
    if (!srv.paced) {
        fprintf(stderr, "signal %d ignored: downloads are not paced (no -b)\n", si->signo);
        return 0;
    }
    /* srv.rate is touched only here, on poller 0's thread. */
    uint64_t rate = si->signo == SIGUSR1 ? srv.rate * 2 : srv.rate / 2;
    if (rate < 1)
        rate = 1;
    if (rate > RATE_MAX)
        rate = RATE_MAX;
    /* Each poller stores it at its next pass; its timers read it from then on. */
    int rc = goev_broadcast(srv.r, set_rate, (void *)(uintptr_t)rate);
    if (rc < 0) {
        fprintf(stderr, "rate change: goev_broadcast: %s\n", strerror(-rc));
        return 0;
    }
    srv.rate = rate;
    fprintf(stderr, "rate=%llu\n", (unsigned long long)rate);
    return 0;
}

static void sig_on_close(goev_handler *h, int reason)
{
}

static const struct goev_handler_ops sig_ops = {
    .on_signal = on_signal,
    .on_close = sig_on_close,
};

/* ---- start-up -------------------------------------------------------------------- */

struct args {
    const char *dir;
};

static int parse_opt(int letter, const char *arg, void *ctx)
{
    struct args *a = ctx;
    if (letter == 'd') {
        a->dir = arg;
        return 0;
    }
    /* 'b' */
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || v < 1 || v > RATE_MAX || arg[0] == '-')
        return -1;
    srv.paced = true;
    srv.rate = v;
    return 0;
}

static const char help[] =
    "  -d DIR            serve the files of DIR\n"
    "  -b BYTES_PER_SEC  pace each download (SIGUSR1 doubles, SIGUSR2 halves the rate);\n"
    "                    -r is SO_REUSEPORT, as for every example\n";

int main(int argc, char **argv)
{
    struct args a = {0};
    struct serve_extra x = {
        .optstring = "d:b:", .usage = "-d DIR [-b BYTES_PER_SEC]", .help = help,
        .take = parse_opt, .ctx = &a,
    };
    struct serve_opts o;
    serve_parse_extra(argc, argv, &o, &x);
    if (!a.dir)
        serve_usage(argv[0], &x);

    srv.dirfd = open(a.dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (srv.dirfd < 0) {
        fprintf(stderr, "%s: %s\n", a.dir, strerror(errno));
        return 1;
    }
    /* Does the kernel have openat2?  Ask once, on DIR itself. */
    const char *no = getenv("GOEV_DOWNLOAD_NO_OPENAT2");
    if (no && *no && strcmp(no, "0") != 0) {
        errno = ENOSYS;
    } else {
        struct open_how how = {
            .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
            .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        long fd = syscall(SYS_openat2, srv.dirfd, ".", &how, sizeof how);
        if (fd >= 0) {
            close((int)fd);
            srv.openat2 = true;
        }
    }
    if (!srv.openat2) {
        fprintf(stderr, "openat2: %s; resolving paths with realpath and O_NOFOLLOW\n",
                strerror(errno));
        if (!(srv.dir_real = realpath(a.dir, NULL))) {
            fprintf(stderr, "%s: %s\n", a.dir, strerror(errno));
            return 1;
        }
    }

    goev_reactor *r;
    if (serve_reactor_new(&o, &r))
        return 1;
    srv.r = r;
    /* Allowed before the reactor runs, from the creating thread. */
    for (int i = 0; i < goev_poller_count(r); i++)
        goev_poller_set_local(goev_reactor_poller(r, i), SLOT_RATE, (void *)(uintptr_t)srv.rate);

    /* SIGUSR1/2 as events on poller 0.  Called here, on the main thread,
     * before any poller thread exists: the signals are blocked in this
     * thread and so in every thread started later (poller threads block
     * all signals anyway), and only the signalfd sees them. */
    static goev_handler sig_h;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    goev_handler_init(&sig_h, &sig_ops);
    int rc = goev_signal_watch(goev_reactor_poller(r, 0), &sig_h, &set);
    if (rc < 0) {
        fprintf(stderr, "goev_signal_watch: %s\n", strerror(-rc));
        goev_reactor_free(r);
        return 1;
    }

    int status = serve_run(r, &o, new_handler, NULL);
    goev_reactor_free(r);
    close(srv.dirfd);
    free(srv.dir_real);
    return status;
}
