/* websocket.c - RFC 6455 websocket echo server on goev.
 *
 *   examples/websocket -p PORT -t POLLERS [-r] [-s]
 *
 * Any path upgrades.  Every text or binary message comes back as one
 * unfragmented frame of the same type; a ping is answered with a pong
 * carrying its payload; a close frame is answered with a close frame
 * carrying the same status code, and the server then closes the TCP
 * connection.  A plain HTTP request is answered 426 Upgrade Required
 * (keep-alive when the client allows it); a broken handshake gets a 400
 * and the connection closes.
 *
 * A protocol error (RFC 6455 7.4.1 codes: 1002 protocol error, 1007 invalid
 * UTF-8, 1009 message too big) is answered with a close frame carrying the
 * code; the server then stops echoing and reads and discards until the
 * client's own close frame, its EOF or LINGER_MS, and only then closes.
 * Closing with unread bytes in the socket would make the kernel send a
 * reset, which can destroy the close frame before the client has read it.
 *
 * Payloads are consumed as they arrive, unmasked straight into the message
 * buffer: goev keeps at most an incomplete frame header for us, so a
 * message of MAX_MESSAGE bytes works within goev's 16 MiB input cap, and a
 * connection's memory is bounded by its message.  A client that sends
 * faster than it reads is pushed back on by goev's output watermarks, as
 * in echo.c: past the high mark reading stops until the queue drains, with
 * no code here.
 *
 * -p 0 picks a free port; -r gives each poller its own SO_REUSEPORT
 * listener; -s prints the summed statistics on exit. */
#include "goev.h"
#include "serve.h"
#include "http.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_MESSAGE (16u << 20)  /* sum of a message's fragments; more is a 1009 */
#define LINGER_MS 5000           /* wait for the client's close after ours */
#define KEEP_BUF (64u << 10)     /* message buffer kept between messages */
#define MAX_CONTROL 125          /* RFC 6455 5.5: control payload limit */

#define OP_CONT 0x0
#define OP_TEXT 0x1
#define OP_BINARY 0x2
#define OP_CLOSE 0x8
#define OP_PING 0x9
#define OP_PONG 0xA

#define CLOSE_PROTOCOL 1002
#define CLOSE_BAD_DATA 1007
#define CLOSE_TOO_BIG 1009
#define CLOSE_INTERNAL 1011

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum state {
    ST_HTTP,        /* waiting for the handshake (426 answers keep it here) */
    ST_OPEN,        /* upgraded: echoing */
    ST_CLOSING,     /* our close frame is out: discarding until theirs */
    ST_DONE,        /* goev_close called: nothing more to do */
};

/* Where the payload of the current frame goes. */
enum sink {
    SINK_MESSAGE,   /* data frame: appended to the message being assembled */
    SINK_CONTROL,   /* ping, pong or close: into ctl[] */
    SINK_SKIP,      /* discarded (after a close frame of ours) */
};

/* Incremental UTF-8 validator (RFC 3629): need is the number of
 * continuation bytes still expected, and [lo, hi] the range the next one
 * must fall in.  The narrower ranges after E0, ED, F0 and F4 reject overlong
 * forms, surrogates and code points past U+10FFFF at the byte that makes
 * them so, which is as early as the bytes allow. */
struct utf8 {
    uint8_t need, lo, hi;
};

struct conn {
    goev_handler h;
    goev_timer linger;      /* LINGER_MS after our close frame */
    enum state state;
    int garbage;            /* a header we cannot skip: discard everything */

    /* the frame being received */
    int in_frame;
    int fin;
    unsigned op;
    enum sink sink;
    uint8_t key[4];
    uint64_t left;          /* payload bytes still to come */
    uint64_t pos;           /* payload bytes seen: the masking offset */

    /* the message being assembled from data frames */
    unsigned msg_op;        /* OP_TEXT or OP_BINARY; 0 when none is open */
    char *msg;
    size_t msg_len, msg_cap;
    struct utf8 utf8;

    uint8_t ctl[MAX_CONTROL];
    size_t ctl_len;
};

static struct conn *conn_of(goev_handler *h)
{
    return (struct conn *)((char *)h - offsetof(struct conn, h));
}

/* ---- UTF-8 ------------------------------------------------------------- */

static void utf8_init(struct utf8 *u)
{
    *u = (struct utf8){ .lo = 0x80, .hi = 0xBF };
}

/* Feed n bytes; 0, or -1 at the first byte that cannot be valid UTF-8. */
static int utf8_feed(struct utf8 *u, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (u->need) {
            uint8_t b = p[i++];
            if (b < u->lo || b > u->hi)
                return -1;
            u->need--;
            u->lo = 0x80;
            u->hi = 0xBF;
            continue;
        }
        /* Between characters: skip ASCII eight bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i == n)
            break;
        uint8_t b = p[i++];
        if (b < 0x80)
            continue;
        if (b >= 0xC2 && b <= 0xDF) {
            u->need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            u->need = 2;
            if (b == 0xE0)
                u->lo = 0xA0;       /* overlong below U+0800 */
            else if (b == 0xED)
                u->hi = 0x9F;       /* surrogates U+D800..DFFF */
        } else if (b >= 0xF0 && b <= 0xF4) {
            u->need = 3;
            if (b == 0xF0)
                u->lo = 0x90;       /* overlong below U+10000 */
            else if (b == 0xF4)
                u->hi = 0x8F;       /* past U+10FFFF */
        } else {
            return -1;              /* 80..C1 lead, or F5..FF */
        }
    }
    return 0;
}

/* ---- output ------------------------------------------------------------ */

/* Queue one unmasked frame with FIN set (server frames are never
 * fragmented here).  The header and payload are two goev_writes that leave
 * in the same system call. */
static int send_frame(struct conn *c, unsigned op, const void *payload, size_t len)
{
    uint8_t hdr[10];
    size_t hlen;
    hdr[0] = (uint8_t)(0x80 | op);
    if (len < 126) {
        hdr[1] = (uint8_t)len;
        hlen = 2;
    } else if (len <= 0xFFFF) {
        hdr[1] = 126;
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        hlen = 4;
    } else {
        hdr[1] = 127;
        for (int i = 0; i < 8; i++)
            hdr[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hlen = 10;
    }
    int err = goev_write(&c->h, hdr, hlen);
    if (err == 0 && len)
        err = goev_write(&c->h, payload, len);
    return err;
}

static int send_close(struct conn *c, unsigned code)
{
    uint8_t p[2] = { (uint8_t)(code >> 8), (uint8_t)code };
    return send_frame(c, OP_CLOSE, p, sizeof p);
}

/* Drop the message being assembled.  A large buffer is freed so that an
 * idle connection holds at most KEEP_BUF. */
static void message_reset(struct conn *c)
{
    c->msg_op = 0;
    c->msg_len = 0;
    if (c->msg_cap > KEEP_BUF) {
        free(c->msg);
        c->msg = NULL;
        c->msg_cap = 0;
    }
}

/* Nothing more to read or wait for: close once what is queued has left.
 * The timers would only find the connection closing (goev cancels them when
 * the close completes, not when it starts). */
static void finish(struct conn *c)
{
    c->state = ST_DONE;
    goev_timer_cancel(&c->linger);
    goev_close(&c->h);
}

/* A protocol error: send our close frame with code, stop echoing, and
 * discard input until the client's close frame, its EOF or the linger
 * timer (see the top of the file for why not close at once). */
static int fail(struct conn *c, unsigned code)
{
    c->state = ST_CLOSING;
    c->sink = SINK_SKIP;
    message_reset(c);
    int err = send_close(c, code);
    if (err < 0)
        return err;
    /* Without the timer the wait would have no bound: close now. */
    if (goev_timer_start(goev_handler_poller(&c->h), &c->h, &c->linger, LINGER_MS, 0) < 0)
        finish(c);
    return 0;
}

/* ---- frames ------------------------------------------------------------ */

static int valid_close_code(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

/* Make room for more bytes of the message (the total is already checked
 * against MAX_MESSAGE).  Doubling keeps many small fragments cheap. */
static int message_reserve(struct conn *c, size_t need)
{
    if (need <= c->msg_cap)
        return 0;
    size_t cap = c->msg_cap * 2;
    if (cap < need)
        cap = need;
    if (cap > MAX_MESSAGE)
        cap = MAX_MESSAGE;
    char *p = realloc(c->msg, cap);
    if (!p)
        return -ENOMEM;
    c->msg = p;
    c->msg_cap = cap;
    return 0;
}

/* Parse a frame header at d[0..len).  Returns its length, 0 if it is not
 * complete yet, or < 0 (a negative errno) if the connection must close.
 * Validates it (when the connection is open) and decides where the payload
 * goes. */
static ssize_t frame_header(struct conn *c, const uint8_t *d, size_t len)
{
    if (len < 2)
        return 0;
    int masked = d[1] & 0x80;
    unsigned len7 = d[1] & 0x7F;
    size_t hlen = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);
    if (len < hlen)
        return 0;
    uint64_t plen = len7;
    if (len7 == 126) {
        plen = (uint64_t)d[2] << 8 | d[3];
    } else if (len7 == 127) {
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = plen << 8 | d[2 + i];
    }
    c->fin = d[0] & 0x80;
    c->op = d[0] & 0x0F;
    c->left = plen;
    c->pos = 0;
    c->in_frame = 1;
    if (masked)
        memcpy(c->key, d + hlen - 4, 4);

    if (plen >> 63) {
        /* RFC 6455 5.2: the most significant bit must be 0.  The length is
         * meaningless, so no later frame boundary can be found. */
        c->garbage = 1;
        int err = c->state == ST_OPEN ? fail(c, CLOSE_PROTOCOL) : 0;
        return err < 0 ? err : (ssize_t)hlen;
    }
    if (c->state == ST_CLOSING) {
        if (c->op == OP_CLOSE) {
            finish(c);              /* the client answered ours */
            return (ssize_t)hlen;
        }
        c->sink = SINK_SKIP;
        return (ssize_t)hlen;
    }

    int err = 0;
    if (d[0] & 0x70) {
        err = fail(c, CLOSE_PROTOCOL);     /* RSV bits: no extension agreed */
    } else if (!masked) {
        err = fail(c, CLOSE_PROTOCOL);     /* 5.1: client frames are masked */
    } else if (c->op & 0x8) {
        /* 5.5: control frames are not fragmented and carry <= 125 bytes. */
        if (c->op > OP_PONG || !c->fin || plen > MAX_CONTROL) {
            err = fail(c, CLOSE_PROTOCOL);
        } else {
            c->sink = SINK_CONTROL;
            c->ctl_len = 0;
        }
    } else if (c->op > OP_BINARY) {
        err = fail(c, CLOSE_PROTOCOL);     /* reserved data opcode */
    } else if ((c->op == OP_CONT) != (c->msg_op != 0)) {
        /* 5.4: a continuation needs an open message, and a new message
         * cannot start while one is open. */
        err = fail(c, CLOSE_PROTOCOL);
    } else if (plen > MAX_MESSAGE - c->msg_len) {
        err = fail(c, CLOSE_TOO_BIG);      /* decided before the payload */
    } else {
        if (c->op != OP_CONT) {
            c->msg_op = c->op;
            utf8_init(&c->utf8);
        }
        c->sink = SINK_MESSAGE;
        if (message_reserve(c, c->msg_len + (size_t)plen) < 0)
            err = fail(c, CLOSE_INTERNAL);
    }
    return err < 0 ? err : (ssize_t)hlen;
}

/* Copy n payload bytes to dst, unmasking them (RFC 6455 5.3) from masking
 * offset pos.  Eight bytes at a time with the key rotated to the offset. */
static void unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4], uint64_t pos)
{
    uint8_t k8[8];
    for (int i = 0; i < 8; i++)
        k8[i] = key[(pos + (unsigned)i) & 3];
    uint64_t k;
    memcpy(&k, k8, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ key[(pos + i) & 3];
}

/* n bytes of the current frame's payload. */
static int frame_payload(struct conn *c, const uint8_t *d, size_t n)
{
    if (c->sink == SINK_MESSAGE) {
        uint8_t *dst = (uint8_t *)c->msg + c->msg_len;
        unmask(dst, d, n, c->key, c->pos);
        c->msg_len += n;
        if (c->msg_op == OP_TEXT && utf8_feed(&c->utf8, dst, n) < 0)
            return fail(c, CLOSE_BAD_DATA);
    } else if (c->sink == SINK_CONTROL) {
        unmask(c->ctl + c->ctl_len, d, n, c->key, c->pos);
        c->ctl_len += n;
    }
    c->pos += n;
    return 0;
}

static int on_client_close(struct conn *c)
{
    if (c->ctl_len == 0) {
        /* No status code: answer with none either (RFC 6455 7.1.5). */
        int err = send_frame(c, OP_CLOSE, NULL, 0);
        if (err < 0)
            return err;
        finish(c);
        return 0;
    }
    if (c->ctl_len == 1)
        return fail(c, CLOSE_PROTOCOL);
    unsigned code = (unsigned)c->ctl[0] << 8 | c->ctl[1];
    if (!valid_close_code(code))
        return fail(c, CLOSE_PROTOCOL);
    struct utf8 u;
    utf8_init(&u);
    if (utf8_feed(&u, c->ctl + 2, c->ctl_len - 2) < 0 || u.need)
        return fail(c, CLOSE_BAD_DATA);
    int err = send_close(c, code);
    if (err < 0)
        return err;
    finish(c);
    return 0;
}

/* The current frame is complete. */
static int frame_end(struct conn *c)
{
    c->in_frame = 0;
    if (c->sink == SINK_CONTROL) {
        if (c->op == OP_PING)
            return send_frame(c, OP_PONG, c->ctl, c->ctl_len);
        if (c->op == OP_CLOSE)
            return on_client_close(c);
        return 0;                           /* a pong needs nothing */
    }
    if (c->sink != SINK_MESSAGE || !c->fin)
        return 0;
    if (c->msg_op == OP_TEXT && c->utf8.need)
        return fail(c, CLOSE_BAD_DATA);     /* truncated at the very end */
    int err = send_frame(c, c->msg_op, c->msg, c->msg_len);
    message_reset(c);
    return err;
}

/* Frames in d[0..len): returns the bytes consumed (all but an incomplete
 * header), or a negative errno to close. */
static ssize_t on_frames(struct conn *c, const uint8_t *d, size_t len)
{
    size_t off = 0;
    while (off < len && c->state != ST_DONE) {
        if (c->garbage)
            return (ssize_t)len;
        if (!c->in_frame) {
            ssize_t n = frame_header(c, d + off, len - off);
            if (n < 0)
                return n;
            if (n == 0)
                break;
            off += (size_t)n;
        } else {
            size_t n = len - off;
            if (n > c->left)
                n = (size_t)c->left;
            int err = frame_payload(c, d + off, n);
            if (err < 0)
                return err;
            off += n;
            c->left -= n;
        }
        if (c->in_frame && c->left == 0 && c->state != ST_DONE) {
            int err = frame_end(c);
            if (err < 0)
                return err;
        }
    }
    return (ssize_t)off;
}

/* ---- handshake --------------------------------------------------------- */

/* Does the comma-separated list v[0..n) hold token (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *token)
{
    size_t tlen = strlen(token);
    const char *end = v + n;
    while (v < end) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        const char *e = comma ? comma : end;
        const char *s = v;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - s) == tlen && !strncasecmp(s, token, tlen))
            return 1;
        v = comma ? comma + 1 : end;
    }
    return 0;
}

static int field_has_token(const struct http_req *rq, const char *name, const char *token)
{
    size_t n;
    const char *v = http_req_field(rq, name, &n);
    return v && has_token(v, n, token);
}

/* Sec-WebSocket-Accept for a valid Sec-WebSocket-Key, into out (29 bytes:
 * 28 of base64 and a NUL).  Returns 0, or -1 if the key is not the base64
 * of 16 bytes (RFC 6455 4.2.1: exactly 24 characters, canonical). */
static int accept_value(const char *key, size_t klen, char out[29])
{
    unsigned char raw[18], again[25];
    if (klen != 24 || EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18)
        return -1;
    /* 24 characters decode to 18 bytes whatever the padding says: the key
     * is valid only if its 16 bytes encode back to exactly it. */
    if (EVP_EncodeBlock(again, raw, 16) != 24 || memcmp(again, key, 24))
        return -1;

    char cat[24 + sizeof ws_guid - 1];
    memcpy(cat, key, 24);
    memcpy(cat + 24, ws_guid, sizeof ws_guid - 1);
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned int shalen;
    if (!EVP_Digest(cat, sizeof cat, sha, &shalen, EVP_sha1(), NULL) || shalen != 20)
        return -1;
    return EVP_EncodeBlock((unsigned char *)out, sha, 20) == 28 ? 0 : -1;
}

/* A short plain-text HTTP answer.  extra holds additional header lines. */
static int reply(struct conn *c, int status, const char *extra, const char *conn_hdr,
                 int head_only)
{
    const char *body = http_status_reason(status);
    char date[HTTP_DATE_LEN + 1], hdrs[256], buf[512];
    http_date(time(NULL), date);
    snprintf(hdrs, sizeof hdrs, "%sConnection: %s\r\n", extra, conn_hdr);
    size_t n = http_answer(buf, sizeof buf, status, "text/plain", body, strlen(body), date, hdrs,
                           head_only);
    return n ? goev_write(&c->h, buf, n) : -EMSGSIZE;
}

/* Refuse a handshake: 400, then close. */
static int bad_handshake(struct conn *c)
{
    int err = reply(c, 400, "Sec-WebSocket-Version: 13\r\n", "close", 0);
    finish(c);
    return err;
}

/* One complete request.  Returns 0 or a negative errno. */
static int on_request(struct conn *c, const struct http_req *rq)
{
    if (!field_has_token(rq, "upgrade", "websocket") ||
        !field_has_token(rq, "connection", "upgrade")) {
        /* Not a websocket request: say what this server speaks.  An
         * Upgrade field in a response needs "upgrade" in Connection too
         * (RFC 9110 7.8). */
        int head = rq->method_id == HTTP_REQ_HEAD;
        const char *conn_hdr = !rq->keep_alive ? "Upgrade, close"
                             : rq->minor == 0 ? "Upgrade, keep-alive" : "Upgrade";
        int err = reply(c, 426, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                              conn_hdr, head);
        if (!rq->keep_alive)
            finish(c);
        return err;
    }

    /* RFC 6455 4.2.1: a GET, HTTP/1.1 or later, with a Host, version 13
     * and a key of 16 base64-encoded bytes. */
    size_t vlen, klen;
    const char *ver = http_req_field(rq, "sec-websocket-version", &vlen);
    const char *key = http_req_field(rq, "sec-websocket-key", &klen);
    char accept[29];
    if (rq->method_id != HTTP_REQ_GET || rq->minor < 1 || !rq->host || !ver || vlen != 2 ||
        memcmp(ver, "13", 2) || !key || accept_value(key, klen, accept) < 0)
        return bad_handshake(c);

    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    c->state = ST_OPEN;
    return goev_write(&c->h, buf, (size_t)n);
}

/* Requests in data[0..len) until the upgrade; returns the bytes consumed or
 * a negative errno. */
static ssize_t on_http(struct conn *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len && c->state == ST_HTTP) {
        struct http_req rq;
        ssize_t n = http_req_parse(data + off, len - off, &rq);
        if (n == 0)
            break;
        if (n < 0) {
            /* A malformed request: the stream cannot be trusted after it. */
            int err = reply(c, (int)-n, "", "close", 0);
            finish(c);
            return err < 0 ? err : (ssize_t)len;
        }
        off += (size_t)n;
        int err = on_request(c, &rq);
        if (err < 0)
            return err;
    }
    return (ssize_t)off;
}

/* ---- handler ----------------------------------------------------------- */

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = conn_of(h);
    size_t off = 0;
    if (c->state == ST_HTTP) {
        ssize_t n = on_http(c, data, len);
        if (n < 0)
            return n;
        off = (size_t)n;
    }
    /* Frames may follow the handshake in the same read. */
    if (c->state == ST_OPEN || c->state == ST_CLOSING) {
        ssize_t n = on_frames(c, (const uint8_t *)data + off, len - off);
        if (n < 0)
            return n;
        off += (size_t)n;
    }
    if (c->state == ST_DONE)
        return (ssize_t)len;
    return (ssize_t)off;
}

static int on_timeout(goev_handler *h, goev_timer *t)
{
    struct conn *c = conn_of(h);
    (void)t;
    /* The linger timer: the client never answered our close frame. */
    finish(c);
    return 0;
}

static void on_close(goev_handler *h, int reason)
{
    struct conn *c = conn_of(h);
    free(c->msg);
    free(c);
}

/* on_eof is left NULL: at EOF what is queued is sent, then the connection
 * closes, whatever the state. */
static const struct goev_handler_ops conn_ops = {
    .on_read = on_read,
    .on_timeout = on_timeout,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &conn_ops);
    goev_timer_init(&c->linger);
    return &c->h;
}

int main(int argc, char **argv)
{
    struct serve_opts o;
    goev_reactor *r;
    serve_parse(argc, argv, &o);
    if (serve_reactor_new(&o, &r))
        return 1;
    int status = serve_run(r, &o, new_handler, NULL);
    goev_reactor_free(r);
    return status;
}
