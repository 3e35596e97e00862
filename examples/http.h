/* http.h - a small, fast HTTP/1.1 request-head parser for keep-alive
 * servers that receive pipelined requests.
 *
 * USE
 *
 *   The parser is stateless: it is handed the bytes a connection has
 *   received and not yet consumed, and parses the one request at their
 *   start.  A server's on_read loops over the buffer:
 *
 *       size_t off = 0;
 *       for (;;) {
 *           struct http_req rq;
 *           ssize_t n = http_req_parse(data + off, len - off, &rq);
 *           if (n == 0) break;                 // incomplete: keep the tail
 *           if (n < 0) { reply(-n); close; }   // 400, 413, 431 or 501
 *           answer(&rq);
 *           off += n;
 *       }
 *       return off;                            // goev keeps data[off..len)
 *
 *   A request split across reads is parsed again from its start when more
 *   bytes arrive.  That re-scan is bounded: a head is at most
 *   HTTP_REQ_MAX_HEAD bytes, and lines already seen are only re-validated.
 *
 * WHAT IS ACCEPTED
 *
 *   request-line  = method SP+ request-target SP+ "HTTP/1." ("0"|"1") EOL
 *   header        = field-name ":" OWS field-value OWS EOL
 *   EOL           = CRLF or a bare LF (RFC 9112 2.2 lets a recipient accept
 *                   a lone LF; curl, wrk and browsers never send one, but
 *                   hand-typed requests do).  A CR anywhere else is a 400.
 *
 *   - method: any RFC 9110 token (methods the server does not implement are
 *     the server's business, not a syntax error); method_id names the
 *     common ones.  Case-sensitive, as the RFC says.
 *   - request-target: origin-form ("/path?query") or asterisk-form ("*");
 *     bytes 0x21-0x7E and 0x80-0xFF.  Absolute-form ("http://h/p") is
 *     rejected (400): this parser is for origin servers behind no proxy.
 *   - versions other than HTTP/1.0 and HTTP/1.1 are rejected (400).
 *   - field-name: a token; whitespace before the colon is a 400 (RFC 9112
 *     5.1: it is a request-smuggling vector).  obs-fold (a line starting
 *     with SP or HTAB) is a 400 (RFC 9112 5.2 allows rejecting it).
 *   - field-value: HTAB, SP, VCHAR and obs-text (0x80-0xFF); other control
 *     bytes, including NUL, are a 400.
 *   - empty lines (CRLF or LF) before a request-line are skipped, as RFC 9112
 *     2.2 recommends; they count towards the head size.
 *   - Content-Length: 1*DIGIT with optional surrounding OWS.  Any other form,
 *     or two Content-Length fields, is a 400; more than HTTP_REQ_MAX_BODY
 *     is a 413.  The body is part of the request: http_req_parse reports it
 *     complete only when head and body are both in the buffer, and the
 *     returned length covers both, so a caller that skips n bytes skips the
 *     body correctly.
 *   - Transfer-Encoding (any value) is answered 501: this parser does not
 *     decode chunked bodies, and a request with both Transfer-Encoding and
 *     Content-Length must not be guessed at (RFC 9112 6.1).
 *   - Connection: a comma-separated list; the tokens "close" and
 *     "keep-alive" are recognised case-insensitively.  keep_alive is
 *     HTTP/1.1 without "close", or HTTP/1.0 with "keep-alive" and without
 *     "close".
 *
 *   Any byte string is safe input: the parser reads only buf[0..len) and
 *   has no undefined behaviour on any content.
 */
#ifndef EXAMPLES_HTTP_H
#define EXAMPLES_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Largest head (leading empty lines, request-line, fields and the empty
 * line that ends them).  A head that does not end within it is a 431. */
#define HTTP_REQ_MAX_HEAD 8192
/* Largest Content-Length accepted; more is a 413.  The body must fit in the
 * caller's kept input (goev keeps up to max_input, 16 MiB by default). */
#define HTTP_REQ_MAX_BODY (1u << 20)

/* Negative results of http_req_parse: minus the HTTP status to answer. */
#define HTTP_REQ_E400 (-400)    /* malformed request */
#define HTTP_REQ_E413 (-413)    /* Content-Length above HTTP_REQ_MAX_BODY */
#define HTTP_REQ_E431 (-431)    /* head longer than HTTP_REQ_MAX_HEAD */
#define HTTP_REQ_E501 (-501)    /* Transfer-Encoding present */

enum http_req_method {
    HTTP_REQ_OTHER = 0,         /* any other token: see method/method_len */
    HTTP_REQ_GET,
    HTTP_REQ_HEAD,
    HTTP_REQ_POST,
    HTTP_REQ_PUT,
    HTTP_REQ_DELETE,
    HTTP_REQ_OPTIONS,
    HTTP_REQ_PATCH,
};

/* One parsed request.  Every pointer points into the caller's buffer and is
 * valid as long as those bytes are. */
struct http_req {
    const char *method;         /* the method token */
    size_t method_len;
    int method_id;              /* enum http_req_method */
    const char *target;         /* the whole request-target */
    size_t target_len;
    const char *path;           /* target up to '?' or '#' */
    size_t path_len;
    const char *query;          /* after '?', up to '#'; NULL if no '?' */
    size_t query_len;
    int minor;                  /* HTTP/1.<minor>: 0 or 1 */
    int keep_alive;             /* non-zero: the connection may stay open */
    const char *host;           /* value of the (first) Host field, or NULL */
    size_t host_len;
    unsigned nfields;           /* number of header fields */
    size_t head_len;            /* bytes of the head, leading empty lines included */
    uint64_t content_length;    /* body length (0 if none) */
    const char *body;           /* the body: head_len bytes into the buffer */
};

/* Parse the request at the start of buf[0..len).
 * Returns n > 0: a complete request (head and body) occupies buf[0..n) and
 * *rq describes it; 0: no complete request yet (buf holds a valid prefix of
 * one, or nothing but empty lines) - call again with more bytes;
 * < 0: HTTP_REQ_E400/E413/E431/E501, the status to answer before closing.
 * Errors are found as early as the bytes allow: a bad byte in an
 * unfinished head is reported without waiting for the rest.
 * *rq is written only when n > 0. */
ssize_t http_req_parse(const char *buf, size_t len, struct http_req *rq);

/* The value of the first header field of rq called `name` (compared
 * case-insensitively), with the surrounding OWS trimmed, and its length in
 * *len; NULL if rq has no such field.  rq must come from http_req_parse and
 * its buffer must still hold the request.  Linear in the size of the head. */
const char *http_req_field(const struct http_req *rq, const char *name, size_t *len);

/* ---- answers (shared by the example servers) ---------------------------- */

#define HTTP_DATE_LEN 29        /* "Sun, 06 Nov 1994 08:49:37 GMT" */

/* IMF-fixdate of t into buf (HTTP_DATE_LEN + 1 bytes).  A time the format
 * cannot hold (a year past 9999) gives the epoch. */
void http_date(time_t t, char *buf);

/* A Date value for answers, re-rendered at most once a second.  The coarse
 * clock is a vDSO read, not a system call, so ticking it per batch of
 * requests is free.  Start with sec = -1. */
struct http_clock {
    time_t sec;
    char date[HTTP_DATE_LEN + 1];
};

/* Bring c up to the current second: 1 if the date changed, else 0. */
int http_clock_tick(struct http_clock *c);

/* Write a whole answer into dst[0..cap): status line, Server: goev,
 * Content-Type (if ctype), Content-Length: blen, Date, the lines of extra
 * (each ending in CRLF; "" for none), the empty line, and the body unless
 * head_only.  Returns its length, or 0 if it does not fit. */
size_t http_answer(char *dst, size_t cap, int status, const char *ctype, const char *body,
                   size_t blen, const char *date, const char *extra, int head_only);

/* Reason phrase for a status code ("Bad Request"...), "Unknown" if none. */
const char *http_status_reason(int status);

#endif /* EXAMPLES_HTTP_H */
