/* http.c - HTTP/1.1 request-head parser (see http.h for what it accepts).
 *
 * The head is walked once, line by line, and every scan is a search for the
 * first byte that ends a field: a 16-byte SSE2 compare finds the end of a
 * request-target or of a field-value (which is also where the line ends,
 * since CR and LF are control bytes), so the bytes of a line are looked at
 * once, not once to find the line and once more to check it.  Only tokens
 * (method, field names: short) go through a lookup table byte by byte. */
#include "http.h"

#include <stdio.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* RFC 9110 tchar: the bytes of a method or a field-name. */
static const uint8_t tchar[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

/* First byte of [p, end) that cannot be in a request-target: a control
 * byte, SP or DEL (so SP ends the target, CR/LF a truncated line). */
static inline const char *scan_target(const char *p, const char *end)
{
#if defined(__SSE2__)
    const __m128i sp = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, sp), v),
                                   _mm_cmpeq_epi8(v, del));
        unsigned m = (unsigned)_mm_movemask_epi8(bad);
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < end && (uint8_t)*p > 0x20 && *p != 0x7f)
        p++;
    return p;
}

/* First byte of [p, end) that cannot be in a field-value: a control byte
 * other than HTAB, or DEL.  A well-formed line stops at its CR or LF. */
static inline const char *scan_value(const char *p, const char *end)
{
#if defined(__SSE2__)
    const __m128i us = _mm_set1_epi8(0x1f), del = _mm_set1_epi8(0x7f),
                  tab = _mm_set1_epi8('\t');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ctl = _mm_andnot_si128(_mm_cmpeq_epi8(v, tab),
                                       _mm_cmpeq_epi8(_mm_min_epu8(v, us), v));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(v, del)));
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    for (; p < end; p++) {
        uint8_t c = (uint8_t)*p;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            break;
    }
    return p;
}

static inline const char *skip_sp(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

/* Case-insensitive compare of n bytes against a lower-case literal. */
static inline int eq_lower(const char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c >= 'A' && c <= 'Z')
            c |= 0x20;
        if (c != (uint8_t)lit[i])
            return 0;
    }
    return 1;
}

static int method_id(const char *m, size_t n)
{
    switch (n) {
    case 3:
        if (!memcmp(m, "GET", 3)) return HTTP_REQ_GET;
        if (!memcmp(m, "PUT", 3)) return HTTP_REQ_PUT;
        break;
    case 4:
        if (!memcmp(m, "HEAD", 4)) return HTTP_REQ_HEAD;
        if (!memcmp(m, "POST", 4)) return HTTP_REQ_POST;
        break;
    case 5:
        if (!memcmp(m, "PATCH", 5)) return HTTP_REQ_PATCH;
        break;
    case 6:
        if (!memcmp(m, "DELETE", 6)) return HTTP_REQ_DELETE;
        break;
    case 7:
        if (!memcmp(m, "OPTIONS", 7)) return HTTP_REQ_OPTIONS;
        break;
    }
    return HTTP_REQ_OTHER;
}

enum {
    CONN_CLOSE = 1,
    CONN_KEEP = 2,
};

/* Tokens of a Connection value (a #list: elements separated by commas and
 * OWS, empty elements allowed). */
static unsigned connection_tokens(const char *v, const char *ve)
{
    unsigned f = 0;
    while (v < ve) {
        while (v < ve && (*v == ' ' || *v == '\t' || *v == ','))
            v++;
        const char *t = v;
        while (v < ve && *v != ',')
            v++;
        const char *te = v;
        while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        size_t n = (size_t)(te - t);
        if (n == 5 && eq_lower(t, "close", 5))
            f |= CONN_CLOSE;
        else if (n == 10 && eq_lower(t, "keep-alive", 10))
            f |= CONN_KEEP;
    }
    return f;
}

/* End of line at p: CRLF or LF.  Returns the byte after it, NULL if the
 * bytes end first, or p itself if p is not at an end of line. */
static inline const char *eol(const char *p, const char *end)
{
    if (p == end)
        return NULL;
    if (*p == '\n')
        return p + 1;
    if (*p == '\r') {
        if (p + 1 == end)
            return NULL;
        return p[1] == '\n' ? p + 2 : p;
    }
    return p;
}

ssize_t http_req_parse(const char *buf, size_t len, struct http_req *rq)
{
    /* Nothing past the head limit is ever scanned: a head that has not
     * ended inside the window is a 431, whatever follows. */
    const char *end = buf + (len < HTTP_REQ_MAX_HEAD ? len : HTTP_REQ_MAX_HEAD);
    const char *p = buf, *q;
    struct http_req r;

    for (;;) {                                  /* empty lines before a request */
        q = eol(p, end);
        if (!q)
            goto more;
        if (q == p)
            break;
        p = q;
    }

    /* request-line */
    r.method = p;
    if (end - p >= 4 && !memcmp(p, "GET ", 4)) {
        q = p + 3;
        r.method_id = HTTP_REQ_GET;
    } else {
        for (q = p; q < end && tchar[(uint8_t)*q]; q++)
            ;
        if (q == end)
            goto more;
        if (q == p || *q != ' ')
            return HTTP_REQ_E400;
        r.method_id = method_id(p, (size_t)(q - p));
    }
    r.method_len = (size_t)(q - p);

    p = skip_sp(q, end);
    if (p == end)
        goto more;
    if (*p != '/' && *p != '*')
        return HTTP_REQ_E400;
    r.target = p;
    q = scan_target(p, end);
    if (q == end)
        goto more;
    if (*q != ' ')
        return HTTP_REQ_E400;
    r.target_len = (size_t)(q - p);

    p = skip_sp(q, end);
    {
        static const char ver[] = "HTTP/1.";
        size_t avail = (size_t)(end - p);
        if (memcmp(p, ver, avail < 7 ? avail : 7))
            return HTTP_REQ_E400;
        if (avail < 8)
            goto more;
        if (p[7] != '0' && p[7] != '1')
            return HTTP_REQ_E400;
        r.minor = p[7] - '0';
        p += 8;
        q = eol(p, end);
        if (!q)
            goto more;
        if (q == p)
            return HTTP_REQ_E400;
        p = q;
    }

    /* header fields, up to the empty line */
    unsigned conn = 0;
    int have_cl = 0, have_te = 0, too_big = 0;
    uint64_t cl = 0;
    r.host = NULL;
    r.host_len = 0;
    r.nfields = 0;
    for (;;) {
        q = eol(p, end);
        if (!q)
            goto more;
        if (q != p) {                           /* the empty line */
            p = q;
            break;
        }
        const char *name = p;
        while (p < end && tchar[(uint8_t)*p])
            p++;
        if (p == end)
            goto more;
        if (*p != ':' || p == name)             /* also: obs-fold, SP before ':' */
            return HTTP_REQ_E400;
        size_t nlen = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *v = p;
        p = scan_value(p, end);
        q = eol(p, end);
        if (q == p)                             /* a control byte, or CR without LF */
            return HTTP_REQ_E400;
        const char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        r.nfields++;

        /* Fields are looked at even when their line is not complete yet
         * (q == NULL), so that a bad Content-Length is a 400 at once. */

        switch (nlen) {
        case 4:
            if (!r.host && eq_lower(name, "host", 4)) {
                r.host = v;
                r.host_len = (size_t)(ve - v);
            }
            break;
        case 10:
            if (eq_lower(name, "connection", 10))
                conn |= connection_tokens(v, ve);
            break;
        case 14:
            if (eq_lower(name, "content-length", 14)) {
                if (have_cl || (v == ve && q))
                    return HTTP_REQ_E400;
                have_cl = 1;
                for (const char *d = v; d < ve; d++) {
                    if (*d < '0' || *d > '9')
                        return HTTP_REQ_E400;
                    if (!too_big) {
                        cl = cl * 10 + (uint64_t)(*d - '0');
                        too_big = cl > HTTP_REQ_MAX_BODY;
                    }
                }
            }
            break;
        case 17:
            if (eq_lower(name, "transfer-encoding", 17))
                have_te = 1;
            break;
        }
        if (!q)
            goto more;
        p = q;
    }
    if (have_te)
        return HTTP_REQ_E501;
    if (too_big)
        return HTTP_REQ_E413;

    r.head_len = (size_t)(p - buf);
    r.content_length = have_cl ? cl : 0;
    r.body = p;
    if (r.content_length > len - r.head_len)
        return 0;                               /* body not all here yet */

    r.path = r.target;
    r.path_len = r.target_len;
    r.query = NULL;
    r.query_len = 0;
    {
        const char *te = r.target + r.target_len;
        const char *hash = memchr(r.target, '#', r.target_len);
        if (hash)
            te = hash;
        const char *qm = memchr(r.target, '?', (size_t)(te - r.target));
        r.path_len = (size_t)((qm ? qm : te) - r.target);
        if (qm) {
            r.query = qm + 1;
            r.query_len = (size_t)(te - r.query);
        }
    }
    if (conn & CONN_CLOSE)
        r.keep_alive = 0;
    else
        r.keep_alive = r.minor == 1 || (conn & CONN_KEEP);
    *rq = r;
    return (ssize_t)(r.head_len + r.content_length);

more:
    return len >= HTTP_REQ_MAX_HEAD ? HTTP_REQ_E431 : 0;
}

const char *http_req_field(const struct http_req *rq, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    const char *end = rq->body;     /* the head ends where the body starts */
    const char *p = memchr(rq->target + rq->target_len, '\n',
                           (size_t)(end - (rq->target + rq->target_len)));
    /* The parser accepted the head: every line is "name:value" ending in
     * LF (maybe after CR), and the last one is empty. */
    while (p && ++p < end) {
        const char *le = memchr(p, '\n', (size_t)(end - p));
        if (!le)
            break;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && (size_t)(colon - p) == nlen) {
            int same = 1;
            for (size_t i = 0; i < nlen && same; i++) {
                unsigned char a = (unsigned char)p[i], b = (unsigned char)name[i];
                same = (a | (a >= 'A' && a <= 'Z' ? 0x20 : 0)) ==
                       (b | (b >= 'A' && b <= 'Z' ? 0x20 : 0));
            }
            if (same) {
                const char *v = colon + 1, *ve = le;
                if (ve > v && ve[-1] == '\r')
                    ve--;
                while (v < ve && (*v == ' ' || *v == '\t'))
                    v++;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                    ve--;
                *len = (size_t)(ve - v);
                return v;
            }
        }
        p = le;
    }
    *len = 0;
    return NULL;
}

void http_date(time_t t, char *buf)
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) ||
        strftime(buf, HTTP_DATE_LEN + 1, "%a, %d %b %Y %H:%M:%S GMT", &tm) != HTTP_DATE_LEN)
        memcpy(buf, "Thu, 01 Jan 1970 00:00:00 GMT", HTTP_DATE_LEN + 1);
}

int http_clock_tick(struct http_clock *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec == c->sec)
        return 0;
    c->sec = ts.tv_sec;
    http_date(ts.tv_sec, c->date);
    return 1;
}

size_t http_answer(char *dst, size_t cap, int status, const char *ctype, const char *body,
                   size_t blen, const char *date, const char *extra, int head_only)
{
    int n = snprintf(dst, cap,
                     "HTTP/1.1 %d %s\r\nServer: goev\r\n%s%s%sContent-Length: %zu\r\n"
                     "Date: %s\r\n%s\r\n",
                     status, http_status_reason(status),
                     ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
                     blen, date, extra);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    size_t len = (size_t)n;
    if (!head_only && blen) {
        if (len + blen > cap)
            return 0;
        memcpy(dst + len, body, blen);
        len += blen;
    }
    return len;
}

const char *http_status_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 416: return "Range Not Satisfiable";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}
