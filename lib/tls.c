/* tls.c - the TLS layer of a connection, with OpenSSL 3.
 *
 * Where it sits: the backends read and write ciphertext exactly as for a
 * plain connection (epoll's read buffer, io_uring's provided buffers and
 * SENDs).  conn.c hands each read to goev__tls_input, which lets OpenSSL
 * take the bytes straight from the backend's buffer through a BIO of our
 * own (no socket BIO, no system call of OpenSSL's) and hands the plaintext
 * back through goev__deliver, the same path a plain read takes to on_read.
 * What the application writes is queued as plaintext in the TLS state and
 * encrypted at the end of the pass, when the poller flushes (one pass's
 * writes to a connection become as few records as the 16 KiB record size
 * allows); OpenSSL's records are appended to the connection's output
 * queue by the same BIO, and go out in the backend's one send.
 *
 * The handshake comes before on_open; its timeout is a timer in the
 * connection's struct goev__connecting, which the TLS state embeds (the
 * connect timeout uses it first on a client).  Every failure closes the
 * connection with a GOEV_ETLS* reason and leaves OpenSSL's error queue
 * empty. */
#include "goev-internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static __thread char tls_err[256];

const char *goev_tls_error_string(void)
{
    return tls_err;
}

void goev_tls_opts_init(struct goev_tls_opts *o)
{
    memset(o, 0, sizeof *o);
}

#ifndef GOEV_HAVE_OPENSSL

/* Built without OpenSSL: no context can be made, so no connection ever
 * has a TLS layer and the hooks below are never reached. */
int goev_tls_ctx_new(goev_tls_ctx **out, int server, const struct goev_tls_opts *o)
{
    (void)server, (void)o;
    if (out)
        *out = NULL;
    return GOEV_ENOTLS;
}
int goev_tls_ctx_add_sni(goev_tls_ctx *ctx, const char *name, const char *cert, const char *key)
{
    (void)ctx, (void)name, (void)cert, (void)key;
    return GOEV_ENOTLS;
}
void goev_tls_ctx_free(goev_tls_ctx *ctx) { (void)ctx; }
goev_tls_ctx *goev__tls_ctx_ref(goev_tls_ctx *ctx) { return ctx; }
int goev__tls_ctx_server(const goev_tls_ctx *ctx) { (void)ctx; return 0; }
int goev_tls_info_get(const goev_handler *h, struct goev_tls_info *out)
{
    (void)out;
    return h && h->conn_ ? -EINVAL : -ENOTCONN;
}
int goev_tls_peer_subject(const goev_handler *h, char *buf, size_t cap)
{
    if (buf && cap)
        *buf = 0;
    return h && h->conn_ ? -EINVAL : -ENOTCONN;
}
int goev__tls_attach(struct goev__conn *c, goev_tls_ctx *ctx, const char *name, const char *ip)
{
    (void)c, (void)ctx, (void)name, (void)ip;
    return GOEV_ENOTLS;
}
void goev__tls_free(struct goev__conn *c) { (void)c; }
void goev__tls_begin(struct goev__conn *c) { goev__conn_close(c, GOEV_ENOTLS); }
void goev__tls_input(struct goev__conn *c, const char *d, size_t n) { (void)d, (void)n; goev__conn_close(c, GOEV_ENOTLS); }
bool goev__tls_eof(struct goev__conn *c) { (void)c; return false; }
int goev__tls_write(struct goev__conn *c, const void *d, size_t n) { (void)c, (void)d, (void)n; return GOEV_ENOTLS; }
int goev__tls_sendfile(struct goev__conn *c, int fd, uint64_t off, uint64_t len)
{
    (void)c, (void)off, (void)len;
    close(fd);
    return GOEV_ENOTLS;
}
void goev__tls_flush(struct goev__conn *c) { (void)c; }
size_t goev__tls_pending(const struct goev__conn *c) { (void)c; return 0; }
bool goev__tls_busy(const struct goev__conn *c, bool closing) { (void)c, (void)closing; return false; }
bool goev__tls_open(const struct goev__conn *c) { (void)c; return false; }
bool goev__tls_drains(const struct goev__conn *c) { (void)c; return false; }
bool goev__tls_linger(struct goev__conn *c) { (void)c; return false; }
bool goev__tls_lingering(const struct goev__conn *c) { (void)c; return false; }
void goev__tls_poller_fini(goev_poller *p) { (void)p; }

#else /* GOEV_HAVE_OPENSSL */

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define TLS_BUF_SIZE (64u << 10)    /* plaintext scratch per poller */
#define TLS_DEFAULT_HS_MS 10000
/* How long a client that closed gracefully waits for the server's EOF
 * (close_notify, FIN) after its own close_notify, before closing anyway. */
#define TLS_LINGER_MS 2000
/* Client sessions are kept by names shorter than this (see sess_cache). */
#define SESS_NAME_MAX 64

/* A server name and the context whose certificate it gets. */
struct sni_ent {
    struct sni_ent *next;
    SSL_CTX *ssl;
    char name[];
};

struct goev_tls_ctx {
    SSL_CTX *ssl;
    int server;
    int refs;                   /* atomic */
    int hs_timeout_ms;          /* <= 0: none */
    int no_verify, verify_client, min_version;
    unsigned char *alpn;        /* wire format: length-prefixed names */
    unsigned alpn_len;
    char *ca_file, *ca_dir, *ciphers, *ciphersuites;
    struct sni_ent *sni, **sni_tail;
    /* Client: sessions to resume, by server name (or IP); NULL = none
     * kept (goev_tls_opts.no_session_cache). */
    struct sess_cache *sessions;
};

/* tls->st */
enum {
    T_HS_DONE     = 1u << 0,    /* handshake finished, on_open called */
    T_CLIENT      = 1u << 1,
    T_NOTIFY_SENT = 1u << 2,    /* our close_notify queued (or none will be) */
    T_GOT_NOTIFY  = 1u << 3,    /* the peer's close_notify came */
    T_RENEG       = 1u << 4,    /* the peer started a renegotiation */
    T_IN_FLUSH    = 1u << 5,    /* encrypting at flush: the BIO need not mark dirty */
    T_FAILED      = 1u << 6,
    T_LINGER      = 1u << 7,    /* client closing: write side shut, waiting for the server's EOF */
};

struct goev__tls {
    struct goev__connecting cx;     /* first: c->cx points here */
    SSL *ssl;
    goev_tls_ctx *ctx;
    struct goev__conn *c;
    struct goev__outq plain;        /* written, not yet encrypted */
    const char *rd;                 /* ciphertext being fed to OpenSSL */
    size_t rd_len;
    uint32_t st;
    int err;                        /* -ENOMEM from the BIO */
    char sess_name[SESS_NAME_MAX];  /* client: its sessions' name in ctx->sessions; "" = none kept */
};
#define TLS_BLOCK 256               /* its pool block */
_Static_assert(sizeof(struct goev__tls) <= TLS_BLOCK, "TLS state fits its block");
_Static_assert(offsetof(struct goev__tls, cx) == 0, "c->cx is the TLS state");

static inline struct goev__tls *T(const struct goev__conn *c)
{
    return (struct goev__tls *)(void *)c->cx;
}

/* ---- errors -------------------------------------------------------------- */

/* Keep OpenSSL's reason for the failure in tls_err (prefixed with what),
 * empty its queue, and return that error's code.  The reason is the first
 * error of the SSL library when there is one: the queue can start with a
 * lower layer's ("cipher operation failed") when the SSL layer's says what
 * happened ("decryption failed or bad record mac"). */
static unsigned long take_errors(const char *what)
{
    unsigned long e = 0, first = 0, x;
    while ((x = ERR_get_error()) != 0) {
        if (!first)
            first = x;
        if (!e && ERR_GET_LIB(x) == ERR_LIB_SSL)
            e = x;
    }
    if (!e)
        e = first;
    if (e) {
        char buf[200];
        ERR_error_string_n(e, buf, sizeof buf);
        snprintf(tls_err, sizeof tls_err, "%s: %s", what, buf);
    } else {
        snprintf(tls_err, sizeof tls_err, "%s", what);
    }
    return e;
}

/* ---- the BIO: ciphertext in from the backend's buffer, out into c->out -- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static int ex_index = -1;       /* SSL ex_data: struct goev__tls */
static const char *ktls_note = "not probed";

static int bio_write(BIO *b, const char *buf, int len)
{
    struct goev__tls *t = BIO_get_data(b);
    struct goev__conn *c = t->c;
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (goev__outq_append(&c->p->pool, &c->out, buf, (size_t)len) < 0) {
        t->err = -ENOMEM;
        return -1;
    }
    if (!(t->st & T_IN_FLUSH))
        goev__mark_dirty(c);
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    struct goev__tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t->rd_len) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < t->rd_len ? (size_t)len : t->rd_len;
    memcpy(buf, t->rd, n);
    t->rd += n;
    t->rd_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num, (void)ptr;
    struct goev__tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t ? (long)t->rd_len : 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* The kernel's TLS layer (kTLS): a "tls" TCP upper layer.  On a socket that
 * is not connected, a kernel that has it answers ENOTCONN (after loading
 * the module if it can), one without it ENOENT. */
static void probe_ktls(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ktls_note = "not probed (no socket)";
        return;
    }
#ifndef TCP_ULP
#define TCP_ULP 31
#endif
    int rc = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls");
    int err = rc < 0 ? errno : 0;
    close(fd);
    if (err == ENOENT)
        ktls_note = "not in this kernel (TCP_ULP \"tls\": ENOENT): records are encrypted in user space";
    else
        ktls_note = "offered by this kernel, not used by this version of goev: records are "
                    "encrypted in user space";
}

static void tls_once(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "goev");
    if (bio_method) {
        BIO_meth_set_write(bio_method, bio_write);
        BIO_meth_set_read(bio_method, bio_read);
        BIO_meth_set_ctrl(bio_method, bio_ctrl);
        BIO_meth_set_create(bio_method, bio_create);
    }
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    probe_ktls();
    goev__debug("tls: %s; kernel TLS: %s", OpenSSL_version(OPENSSL_VERSION), ktls_note);
}

/* ---- contexts ------------------------------------------------------------- */

static char *dup_or_null(const char *s, int *err)
{
    if (!s)
        return NULL;
    char *d = goev__malloc(strlen(s) + 1);
    if (!d)
        *err = -ENOMEM;
    else
        strcpy(d, s);
    return d;
}

/* "h2,http/1.1" -> "\x02h2\x08http/1.1".  0, -EINVAL, -ENOMEM. */
static int alpn_wire(const char *list, unsigned char **out, unsigned *out_len)
{
    size_t n = strlen(list);
    unsigned char *w = goev__malloc(n + 1);
    if (!w)
        return -ENOMEM;
    size_t wl = 0;
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 0 || l > 255) {
            goev__free(w);
            return -EINVAL;
        }
        w[wl++] = (unsigned char)l;
        memcpy(w + wl, p, l);
        wl += l;
        if (!e)
            break;
        p = e + 1;
    }
    *out = w;
    *out_len = (unsigned)wl;
    return 0;
}

static int readable(const char *path)
{
    return access(path, R_OK) == 0 ? 0 : -errno;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    goev_tls_ctx *ctx = arg;
    unsigned char *sel;
    /* The server's order of preference: SSL_select_next_proto walks its
     * first list and picks the first that the client's also has. */
    if (SSL_select_next_proto(&sel, outlen, ctx->alpn, ctx->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* "*.example.com" matches "a.example.com", not "a.b.example.com". */
static bool name_match(const char *pat, const char *name)
{
    if (pat[0] == '*' && pat[1] == '.') {
        const char *dot = strchr(name, '.');
        return dot && dot != name && strcasecmp(dot, pat + 1) == 0;
    }
    return strcasecmp(pat, name) == 0;
}

static int sni_select(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    goev_tls_ctx *ctx = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK;
    for (struct sni_ent *e = ctx->sni; e; e = e->next)
        if (name_match(e->name, name)) {
            SSL_set_SSL_CTX(ssl, e->ssl);
            break;
        }
    return SSL_TLSEXT_ERR_OK;
}

/* TLS 1.2 renegotiation: a handshake starting after the first finished.
 * (TLS 1.3 has none; its post-handshake messages also start one here.) */
static void info_cb(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (!(where & SSL_CB_HANDSHAKE_START))
        return;
    struct goev__tls *t = SSL_get_ex_data(ssl, ex_index);
    if (t && (t->st & T_HS_DONE) && SSL_version(ssl) <= TLS1_2_VERSION)
        t->st |= T_RENEG;
}

/* Everything of ctx's settings that an SSL_CTX carries, with this
 * certificate (server: required; client: optional). */
static int setup_ssl_ctx(goev_tls_ctx *ctx, SSL_CTX *s, const char *cert, const char *key)
{
    int ver = ctx->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(s, ver);
    /* Buffers only while a record is in progress: an idle connection
     * keeps none (OpenSSL's 2 x 17 KiB otherwise). */
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | (ctx->server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    if (!ctx->server)
        SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION);
    /* Read what the backend has in one go: fewer BIO calls, and a
     * truncated record is seen as bytes still buffered at EOF. */
    SSL_CTX_set_read_ahead(s, 1);
    SSL_CTX_set_info_callback(s, info_cb);
    if (ctx->ciphers && !SSL_CTX_set_cipher_list(s, ctx->ciphers))
        return -EINVAL;
    if (ctx->ciphersuites && !SSL_CTX_set_ciphersuites(s, ctx->ciphersuites))
        return -EINVAL;
    if (cert) {
        int rc = readable(cert);
        if (rc == 0 && key)
            rc = readable(key);
        if (rc < 0)
            return rc;
        if (SSL_CTX_use_certificate_chain_file(s, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(s, key ? key : cert, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(s) != 1)
            return GOEV_ETLS;
    }
    bool verify = ctx->server ? ctx->verify_client : !ctx->no_verify;
    if (verify) {
        if (ctx->ca_file || ctx->ca_dir) {
            int rc = ctx->ca_file ? readable(ctx->ca_file) : 0;
            if (rc == 0 && ctx->ca_dir)
                rc = readable(ctx->ca_dir);
            if (rc < 0)
                return rc;
            if (SSL_CTX_load_verify_locations(s, ctx->ca_file, ctx->ca_dir) != 1)
                return GOEV_ETLS;
        } else if (SSL_CTX_set_default_verify_paths(s) != 1) {
            return GOEV_ETLS;
        }
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER | (ctx->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
        if (ctx->server && ctx->ca_file) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ctx->ca_file);
            if (names)
                SSL_CTX_set_client_CA_list(s, names);
        }
    }
    if (ctx->server) {
        static const unsigned char sid[] = "goev";
        SSL_CTX_set_session_id_context(s, sid, sizeof sid - 1);
        if (ctx->alpn)
            SSL_CTX_set_alpn_select_cb(s, alpn_select, ctx);
        SSL_CTX_set_tlsext_servername_callback(s, sni_select);
        SSL_CTX_set_tlsext_servername_arg(s, ctx);
    } else if (ctx->alpn && SSL_CTX_set_alpn_protos(s, ctx->alpn, ctx->alpn_len) != 0) {
        return -ENOMEM;
    }
    return 0;
}

/* ---- client sessions ------------------------------------------------------ */

/* A client context keeps the sessions its servers give (TLS 1.3 tickets,
 * TLS 1.2 tickets or session IDs) by the name the connection verified -
 * its SNI name, or the numeric address - and the next connection to that
 * name offers one: a resumed handshake, no certificate chain to send or
 * verify, no signature.  A session is offered once (RFC 8446 C.4: a
 * ticket reused shows two connections are one client); a resumed
 * connection gets fresh ones.  Bounded: SESS_NAMES names of SESS_PER
 * sessions; the name used longest ago makes room.  One mutex: the context
 * is shared by every poller. */
#define SESS_NAMES 64
#define SESS_PER 4

struct sess_ent {
    char name[SESS_NAME_MAX];   /* "" = free */
    uint64_t used;              /* last store or take, by sess_cache.clock */
    int n;
    SSL_SESSION *s[SESS_PER];   /* oldest first */
};

struct sess_cache {
    pthread_mutex_t mu;
    uint64_t clock;
    struct sess_ent e[SESS_NAMES];
};

static void sess_cache_free(struct sess_cache *sc)
{
    if (!sc)
        return;
    for (int i = 0; i < SESS_NAMES; i++)
        for (int k = 0; k < sc->e[i].n; k++)
            SSL_SESSION_free(sc->e[i].s[k]);
    pthread_mutex_destroy(&sc->mu);
    goev__free(sc);
}

/* The entry of name, or NULL; with make, a free or the stalest one. */
static struct sess_ent *sess_find(struct sess_cache *sc, const char *name, bool make)
{
    struct sess_ent *stale = NULL;
    for (int i = 0; i < SESS_NAMES; i++) {
        struct sess_ent *e = &sc->e[i];
        if (e->name[0] && strcmp(e->name, name) == 0)
            return e;
        if (!stale || !e->name[0] || (stale->name[0] && e->used < stale->used))
            stale = e;
    }
    if (!make)
        return NULL;
    for (int k = 0; k < stale->n; k++)
        SSL_SESSION_free(stale->s[k]);
    stale->n = 0;
    snprintf(stale->name, sizeof stale->name, "%s", name);
    return stale;
}

/* OpenSSL's new-session callback (SSL_SESS_CACHE_CLIENT): keep it. */
static int sess_new_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct goev__tls *t = SSL_get_ex_data(ssl, ex_index);
    struct sess_cache *sc = t ? t->ctx->sessions : NULL;
    if (!sc || !t->sess_name[0] || !SSL_SESSION_is_resumable(sess))
        return 0;
    pthread_mutex_lock(&sc->mu);
    struct sess_ent *e = sess_find(sc, t->sess_name, true);
    if (e->n == SESS_PER) {
        SSL_SESSION_free(e->s[0]);
        memmove(e->s, e->s + 1, sizeof e->s[0] * (SESS_PER - 1));
        e->n--;
    }
    e->s[e->n++] = sess;
    e->used = ++sc->clock;
    pthread_mutex_unlock(&sc->mu);
    return 1;       /* the reference is the cache's */
}

/* A session for name that has not expired, taken out of the cache (the
 * caller frees it), or NULL. */
static SSL_SESSION *sess_take(struct sess_cache *sc, const char *name)
{
    SSL_SESSION *got = NULL;
    time_t now = time(NULL);
    pthread_mutex_lock(&sc->mu);
    struct sess_ent *e = sess_find(sc, name, false);
    while (e && e->n && !got) {
        SSL_SESSION *s = e->s[--e->n];      /* the newest */
        if (SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s) > now)
            got = s;
        else
            SSL_SESSION_free(s);
    }
    if (e) {
        e->used = ++sc->clock;
        if (!e->n)
            e->name[0] = 0;
    }
    pthread_mutex_unlock(&sc->mu);
    return got;
}

static void ctx_destroy(goev_tls_ctx *ctx)
{
    while (ctx->sni) {
        struct sni_ent *e = ctx->sni;
        ctx->sni = e->next;
        SSL_CTX_free(e->ssl);
        goev__free(e);
    }
    SSL_CTX_free(ctx->ssl);
    sess_cache_free(ctx->sessions);
    goev__free(ctx->alpn);
    goev__free(ctx->ca_file);
    goev__free(ctx->ca_dir);
    goev__free(ctx->ciphers);
    goev__free(ctx->ciphersuites);
    goev__free(ctx);
}

int goev_tls_ctx_new(goev_tls_ctx **out, int server, const struct goev_tls_opts *o)
{
    struct goev_tls_opts defaults;
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!o) {
        goev_tls_opts_init(&defaults);
        o = &defaults;
    }
    tls_err[0] = 0;
    if ((server && !o->cert_file) || (o->min_version != 0 && o->min_version != 12 && o->min_version != 13) ||
        (server && o->verify_client && !o->ca_file && !o->ca_dir) || (o->key_file && !o->cert_file))
        return -EINVAL;
    pthread_once(&bio_once, tls_once);
    if (!bio_method || ex_index < 0)
        return -ENOMEM;
    goev_tls_ctx *ctx = goev__calloc(1, sizeof *ctx);
    if (!ctx)
        return -ENOMEM;
    int rc = 0;
    ctx->server = !!server;
    ctx->refs = 1;
    ctx->hs_timeout_ms = o->handshake_timeout_ms ? o->handshake_timeout_ms : TLS_DEFAULT_HS_MS;
    ctx->no_verify = o->no_verify;
    ctx->verify_client = o->verify_client;
    ctx->min_version = o->min_version;
    ctx->sni_tail = &ctx->sni;
    ctx->ca_file = dup_or_null(o->ca_file, &rc);
    ctx->ca_dir = dup_or_null(o->ca_dir, &rc);
    ctx->ciphers = dup_or_null(o->ciphers, &rc);
    ctx->ciphersuites = dup_or_null(o->ciphersuites, &rc);
    if (rc == 0 && o->alpn)
        rc = alpn_wire(o->alpn, &ctx->alpn, &ctx->alpn_len);
    if (rc == 0) {
        ctx->ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
        rc = ctx->ssl ? setup_ssl_ctx(ctx, ctx->ssl, o->cert_file, o->key_file) : -ENOMEM;
    }
    if (rc == 0 && !server && !o->no_session_cache) {
        if (!(ctx->sessions = goev__calloc(1, sizeof *ctx->sessions))) {
            rc = -ENOMEM;
        } else {
            pthread_mutex_init(&ctx->sessions->mu, NULL);
            SSL_CTX_set_session_cache_mode(ctx->ssl, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
            SSL_CTX_sess_set_new_cb(ctx->ssl, sess_new_cb);
        }
    }
    if (rc < 0) {
        if (rc == GOEV_ETLS || rc == -EINVAL)
            take_errors("goev_tls_ctx_new");
        ERR_clear_error();
        ctx_destroy(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int goev_tls_ctx_add_sni(goev_tls_ctx *ctx, const char *name, const char *cert, const char *key)
{
    if (!ctx || !ctx->server || !name || !*name || !cert || strlen(name) > 253)
        return -EINVAL;
    struct sni_ent *e = goev__calloc(1, sizeof *e + strlen(name) + 1);
    if (!e)
        return -ENOMEM;
    strcpy(e->name, name);
    e->ssl = SSL_CTX_new(TLS_server_method());
    int rc = e->ssl ? setup_ssl_ctx(ctx, e->ssl, cert, key) : -ENOMEM;
    if (rc < 0) {
        if (rc == GOEV_ETLS)
            take_errors("goev_tls_ctx_add_sni");
        ERR_clear_error();
        SSL_CTX_free(e->ssl);
        goev__free(e);
        return rc;
    }
    *ctx->sni_tail = e;
    ctx->sni_tail = &e->next;
    return 0;
}

goev_tls_ctx *goev__tls_ctx_ref(goev_tls_ctx *ctx)
{
    if (ctx)
        __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
    return ctx;
}

int goev__tls_ctx_server(const goev_tls_ctx *ctx)
{
    return ctx && ctx->server;
}

void goev_tls_ctx_free(goev_tls_ctx *ctx)
{
    if (ctx && __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) == 0)
        ctx_destroy(ctx);
}

/* ---- a connection's TLS state ------------------------------------------- */

static int hs_timeout(goev_handler *ih, goev_timer *tm);
static const struct goev_handler_ops hs_ops = { .on_timeout = hs_timeout };

int goev__tls_attach(struct goev__conn *c, goev_tls_ctx *ctx, const char *name, const char *ip)
{
    size_t cap;
    struct goev__tls *t = goev__pool_get(&c->p->pool, TLS_BLOCK, &cap);
    if (!t)
        return -ENOMEM;
    memset(t, 0, sizeof *t);
    t->ssl = SSL_new(ctx->ssl);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (!b) {
        SSL_free(t->ssl);
        ERR_clear_error();
        goev__pool_put(&c->p->pool, t, TLS_BLOCK);
        return -ENOMEM;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    SSL_set_ex_data(t->ssl, ex_index, t);
    if (ctx->server) {
        SSL_set_accept_state(t->ssl);
    } else {
        t->st |= T_CLIENT;
        SSL_set_connect_state(t->ssl);
        int ok = 1;
        if (name) {
            ok = SSL_set_tlsext_host_name(t->ssl, name);
            if (ok && !ctx->no_verify)
                ok = SSL_set1_host(t->ssl, name);
        } else if (ip && !ctx->no_verify) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), ip);
        }
        if (!ok) {
            SSL_free(t->ssl);
            ERR_clear_error();
            goev__pool_put(&c->p->pool, t, TLS_BLOCK);
            return -EINVAL;
        }
        /* Sessions go by the name verified: SNI, else the address. */
        const char *sn = name ? name : ip;
        SSL_SESSION *sess = NULL;
        if (ctx->sessions && sn && strlen(sn) < sizeof t->sess_name) {
            strcpy(t->sess_name, sn);
            sess = sess_take(ctx->sessions, sn);
        }
        if (sess) {
            SSL_set_session(t->ssl, sess);      /* takes its own reference */
            SSL_SESSION_free(sess);
            ERR_clear_error();
        }
    }
    t->ctx = goev__tls_ctx_ref(ctx);
    t->c = c;
    goev_timer_init(&t->cx.timer);
    goev_handler_init(&t->cx.ih, &hs_ops);
    t->cx.ih.user = c;
    t->cx.ih.poller_ = c->p;
    c->cx = &t->cx;
    c->flags |= GOEV__C_TLS;
    return 0;
}

void goev__tls_free(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    goev_timer_cancel(&t->cx.timer);
    SSL_free(t->ssl);
    ERR_clear_error();
    goev__outq_clear(&c->p->pool, &t->plain);
    goev_tls_ctx_free(t->ctx);
    goev__pool_put(&c->p->pool, t, TLS_BLOCK);
    c->cx = NULL;
    c->flags &= ~GOEV__C_TLS;
}

void goev__tls_poller_fini(goev_poller *p)
{
    goev__free(p->tls_buf);
    p->tls_buf = NULL;
}

/* Close c for a TLS reason.  A client whose handshake did not finish
 * failed to connect: on_connect_fail, as for a refused connect.  What
 * OpenSSL queued (its alert) still goes out; no close_notify follows. */
static void fail(struct goev__conn *c, int err)
{
    struct goev__tls *t = T(c);
    if (t->st & T_FAILED)
        return;
    t->st |= T_FAILED | T_NOTIFY_SENT;
    goev_timer_cancel(&t->cx.timer);
    ERR_clear_error();
    if (err <= GOEV_ETLS && err >= GOEV_ETLSTRUNC)
        GOEV__STAT_INC(c->p, tls_failures);
    goev__debug("tls: connection %u closed: %s (%s)", c->slot, goev_strerror(err), tls_err);
    goev__outq_clear(&c->p->pool, &t->plain);
    goev_handler *h = c->h;
    bool connect_fail = (t->st & (T_CLIENT | T_HS_DONE)) == T_CLIENT;
    if (c->flags & GOEV__C_CLOSE_WANT)
        goev__conn_close(c, err);       /* closing already: the error overtakes */
    else
        goev__close_gracefully(c, err);
    if (connect_fail && h->ops->on_connect_fail)
        h->ops->on_connect_fail(h, err);
}

/* Why the last OpenSSL call on t failed (e from SSL_get_error). */
static int classify(struct goev__tls *t, int e)
{
    if (t->err) {
        snprintf(tls_err, sizeof tls_err, "out of memory");
        ERR_clear_error();
        return t->err;
    }
    bool hs = !(t->st & T_HS_DONE);
    if (hs) {
        long v = SSL_get_verify_result(t->ssl);
        if (v != X509_V_OK) {
            snprintf(tls_err, sizeof tls_err, "certificate verify failed: %s",
                     X509_verify_cert_error_string(v));
            ERR_clear_error();
            return GOEV_ETLSVERIFY;
        }
    }
    int reason = ERR_GET_REASON(take_errors(hs ? "handshake" : e == SSL_ERROR_SYSCALL ? "record layer" : "record"));
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE || reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
        return GOEV_ETLSVERIFY;
    return hs ? GOEV_ETLS : GOEV_ETLSPROTO;
}

static int hs_timeout(goev_handler *ih, goev_timer *tm)
{
    (void)tm;
    struct goev__conn *c = ih->user;
    if ((c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT)) || (T(c)->st & T_HS_DONE))
        return 0;
    snprintf(tls_err, sizeof tls_err, "handshake not finished after %d ms", T(c)->ctx->hs_timeout_ms);
    fail(c, GOEV_ETLSTIMEDOUT);
    return 0;
}

static inline bool gone(const struct goev__conn *c)
{
    return c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT);
}

/* One step of the handshake: true once it has finished (on_open called). */
static bool handshake(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    int r = SSL_do_handshake(t->ssl);
    if (r != 1) {
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ && !t->err)
            return false;
        fail(c, classify(t, e));
        return false;
    }
    t->st |= T_HS_DONE;
    goev_timer_cancel(&t->cx.timer);
    GOEV__STAT_INC(c->p, tls_handshakes);
    if (SSL_session_reused(t->ssl))
        GOEV__STAT_INC(c->p, tls_resumed);
    goev__app_open(c);
    return !gone(c);
}

void goev__tls_begin(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    int rc = 0;
    if (t->ctx->hs_timeout_ms > 0) {
        goev_timer_init(&t->cx.timer);
        goev_handler_init(&t->cx.ih, &hs_ops);
        t->cx.ih.user = c;
        t->cx.ih.poller_ = c->p;
        rc = goev__timer_arm(c->p, &t->cx.ih, &t->cx.timer, (uint64_t)t->ctx->hs_timeout_ms);
    }
    if (rc == 0)
        rc = c->p->be->conn_start(c);
    if (rc < 0) {
        goev__conn_close(c, rc);
        return;
    }
    if (t->st & T_CLIENT) {     /* the ClientHello */
        ERR_clear_error();
        handshake(c);
    }
}

/* Closing gracefully and reading on (GOEV__C_DRAIN): records are still
 * fed to OpenSSL - a session ticket, a late answer - but their plaintext
 * goes nowhere. */
static inline bool draining(const struct goev__conn *c)
{
    return (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT | GOEV__C_DRAIN)) ==
           (GOEV__C_CLOSE_WANT | GOEV__C_DRAIN);
}

/* Decrypt what OpenSSL can from t->rd and deliver it, up to the scratch
 * buffer's size per on_read; while draining, drop it. */
static void read_records(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    goev_poller *p = c->p;
    if (!p->tls_buf && !(p->tls_buf = goev__malloc(TLS_BUF_SIZE))) {
        snprintf(tls_err, sizeof tls_err, "out of memory");
        fail(c, -ENOMEM);
        return;
    }
    char *buf = p->tls_buf;
    size_t have = 0;
    for (;;) {
        int n = SSL_read(t->ssl, buf + have, (int)(TLS_BUF_SIZE - have));
        if (GOEV__UNLIKELY(t->st & T_RENEG)) {
            snprintf(tls_err, sizeof tls_err, "the peer asked to renegotiate (refused)");
            fail(c, GOEV_ETLSRENEG);
            return;
        }
        if (n > 0 && draining(c)) {
            have = 0;
            if (!t->rd_len && !SSL_has_pending(t->ssl))
                return;
            continue;
        }
        if (n > 0) {
            have += (size_t)n;
            /* All taken: no SSL_read that would only say WANT_READ - it
             * would take a record buffer again and keep it while idle. */
            if (!t->rd_len && !SSL_has_pending(t->ssl)) {
                goev__deliver(c, buf, have);
                return;
            }
            if (have < TLS_BUF_SIZE)
                continue;
        }
        if (have) {
            goev__deliver(c, buf, have);
            have = 0;
            /* on_read may have closed: the rest of this input is still
             * taken (and dropped) if c drains, or the next read would
             * find a hole in the record stream. */
            if (gone(c) && !draining(c))
                return;
            if (n > 0)
                continue;
        }
        int e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ && !t->err)
            return;
        if (e == SSL_ERROR_ZERO_RETURN) {   /* close_notify */
            t->st |= T_GOT_NOTIFY;
            ERR_clear_error();
            goev__eof_plain(c);
            return;
        }
        fail(c, classify(t, e));
        return;
    }
}

void goev__tls_input(struct goev__conn *c, const char *data, size_t len)
{
    struct goev__tls *t = T(c);
    if (t->st & (T_FAILED | T_GOT_NOTIFY))
        return;
    t->rd = data;
    t->rd_len = len;
    ERR_clear_error();
    /* on_open may have closed already: then the rest is drained. */
    if (((t->st & T_HS_DONE) || handshake(c) || draining(c)) && !(t->st & T_FAILED) &&
        (!gone(c) || draining(c)) && (t->rd_len || SSL_has_pending(t->ssl)))
        read_records(c);
    t->rd = NULL;
    t->rd_len = 0;
}

bool goev__tls_eof(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    if (t->st & T_FAILED)
        return true;
    if (!(t->st & T_HS_DONE)) {
        snprintf(tls_err, sizeof tls_err, "the peer closed the connection during the handshake");
        fail(c, GOEV_ETLS);
        return true;
    }
    if (!(t->st & T_GOT_NOTIFY) && SSL_has_pending(t->ssl)) {
        snprintf(tls_err, sizeof tls_err, "the connection ended inside a record");
        fail(c, GOEV_ETLSTRUNC);
        return true;
    }
    return false;
}

int goev__tls_write(struct goev__conn *c, const void *data, size_t len)
{
    struct goev__tls *t = T(c);
    int rc = goev__outq_append(&c->p->pool, &t->plain, data, len);
    if (rc == 0 && (t->st & T_HS_DONE))
        goev__mark_dirty(c);
    return rc;
}

int goev__tls_sendfile(struct goev__conn *c, int fd, uint64_t off, uint64_t len)
{
    struct goev__tls *t = T(c);
    int rc = goev__outq_append_file(&c->p->pool, &t->plain, fd, off, len);
    if (rc == 0 && (t->st & T_HS_DONE))
        goev__mark_dirty(c);
    return rc;
}

size_t goev__tls_pending(const struct goev__conn *c)
{
    return T(c)->plain.bytes;
}

bool goev__tls_open(const struct goev__conn *c)
{
    return T(c)->st & T_HS_DONE;
}

bool goev__tls_drains(const struct goev__conn *c)
{
    const struct goev__tls *t = T(c);
    return (t->st & (T_HS_DONE | T_FAILED | T_GOT_NOTIFY)) == T_HS_DONE;
}

static int linger_timeout(goev_handler *ih, goev_timer *tm)
{
    (void)tm;
    struct goev__conn *c = ih->user;
    if (c->flags & GOEV__C_CLOSING)
        return 0;
    goev__debug("tls: connection %u: no EOF from the server %d ms after close_notify: closing",
                c->slot, TLS_LINGER_MS);
    goev__conn_close(c, c->close_reason);
    return 0;
}
static const struct goev_handler_ops linger_ops = { .on_timeout = linger_timeout };

bool goev__tls_linger(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    if (t->st & T_LINGER)
        return true;
    if ((t->st & (T_CLIENT | T_HS_DONE | T_NOTIFY_SENT | T_FAILED | T_GOT_NOTIFY)) !=
        (T_CLIENT | T_HS_DONE | T_NOTIFY_SENT))
        return false;
    /* The handshake's timer is free again: it bounds the wait. */
    goev_handler_init(&t->cx.ih, &linger_ops);
    t->cx.ih.user = c;
    t->cx.ih.poller_ = c->p;
    if (goev__timer_arm(c->p, &t->cx.ih, &t->cx.timer, TLS_LINGER_MS) < 0)
        return false;   /* no memory for the bound: close now */
    t->st |= T_LINGER;
    return true;
}

bool goev__tls_lingering(const struct goev__conn *c)
{
    return T(c)->st & T_LINGER;
}

bool goev__tls_busy(const struct goev__conn *c, bool closing)
{
    const struct goev__tls *t = T(c);
    if (!(t->st & T_HS_DONE) || (t->st & T_FAILED))
        return false;
    if (t->plain.bytes)
        return true;
    if (!closing && !(c->flags & (GOEV__C_CLOSE_WANT | GOEV__C_SHUT_WANT)))
        return false;
    return !(t->st & T_NOTIFY_SENT);
}

/* Encrypt one piece of the plaintext queue: 0, or the connection failed. */
static int encrypt_one(struct goev__conn *c, struct goev__tls *t)
{
    struct goev__chunk *ch = t->plain.head;
    struct goev__fileref *f = goev__chunk_file(ch);
    const char *src;
    size_t n;
    if (f) {
        /* A slice of the file through the scratch buffer, while the
         * output is below its high mark (on_sent asks for the next). */
        goev_poller *p = c->p;
        if (!p->tls_buf && !(p->tls_buf = goev__malloc(TLS_BUF_SIZE)))
            return -ENOMEM;
        n = f->left < TLS_BUF_SIZE ? (size_t)f->left : TLS_BUF_SIZE;
        ssize_t r = pread(f->fd, p->tls_buf, n, (off_t)f->off);
        GOEV__STAT_INC(p, sys_read);
        if (r <= 0) {
            snprintf(tls_err, sizeof tls_err, "file send: %s", r < 0 ? strerror(errno) : "the file shrank");
            return r < 0 ? -errno : -ENODATA;
        }
        src = p->tls_buf;
        n = (size_t)r;
    } else {
        src = ch->data + ch->off;
        n = ch->len - ch->off;
    }
    int w = SSL_write(t->ssl, src, (int)n);
    if (w <= 0)
        return classify(t, SSL_get_error(t->ssl, w));
    goev__outq_consume(&c->p->pool, &t->plain, (size_t)w);
    return 0;
}

void goev__tls_flush(struct goev__conn *c)
{
    struct goev__tls *t = T(c);
    if (!(t->st & T_HS_DONE) || (t->st & T_FAILED))
        return;
    ERR_clear_error();
    t->st |= T_IN_FLUSH;
    while (t->plain.head) {
        bool file = goev__outq_head_file(&t->plain) != NULL;
        /* A file goes a slice at a time while the ciphertext queued is
         * below half the high mark (at most 256 KiB): on_sent asks for
         * the next once the kernel took it. */
        size_t limit = c->out_high / 2 < (256u << 10) ? c->out_high / 2 : (256u << 10);
        if (file && c->out.bytes && c->out.bytes >= limit)
            break;
        int rc = encrypt_one(c, t);
        if (rc < 0) {
            t->st &= ~T_IN_FLUSH;
            fail(c, rc);
            return;
        }
    }
    if (!t->plain.bytes && (c->flags & (GOEV__C_CLOSE_WANT | GOEV__C_SHUT_WANT)) &&
        !(t->st & T_NOTIFY_SENT)) {
        t->st |= T_NOTIFY_SENT;
        SSL_shutdown(t->ssl);   /* queues close_notify; the peer's is not waited for */
        ERR_clear_error();
    }
    t->st &= ~T_IN_FLUSH;
}

/* ---- what the handler may ask ------------------------------------------ */

static const struct goev__tls *handler_tls(const goev_handler *h, int *err)
{
    const struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM) {
        *err = -ENOTCONN;
        return NULL;
    }
    if (!(c->flags & GOEV__C_TLS)) {
        *err = -EINVAL;
        return NULL;
    }
    if (!(T(c)->st & T_HS_DONE)) {
        *err = -EAGAIN;
        return NULL;
    }
    return T(c);
}

static void copy_str(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src ? src : "", src ? n : 0);
    dst[src ? n : 0] = 0;
}

int goev_tls_info_get(const goev_handler *h, struct goev_tls_info *out)
{
    int err;
    const struct goev__tls *t = handler_tls(h, &err);
    if (!t)
        return err;
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    const char *v = SSL_get_version(t->ssl);
    copy_str(out->version, sizeof out->version, v, v ? strlen(v) : 0);
    const char *ci = SSL_get_cipher_name(t->ssl);
    copy_str(out->cipher, sizeof out->cipher, ci, ci ? strlen(ci) : 0);
    const unsigned char *a = NULL;
    unsigned al = 0;
    SSL_get0_alpn_selected(t->ssl, &a, &al);
    copy_str(out->alpn, sizeof out->alpn, (const char *)a, al);
    const char *sn = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    copy_str(out->server_name, sizeof out->server_name, sn, sn ? strlen(sn) : 0);
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    out->has_peer_cert = peer != NULL;
    out->peer_verified = peer && SSL_get_verify_result(t->ssl) == X509_V_OK &&
                         (SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER);
    out->resumed = SSL_session_reused(t->ssl);
    return 0;
}

int goev_tls_peer_subject(const goev_handler *h, char *buf, size_t cap)
{
    int err;
    if (buf && cap)
        *buf = 0;
    const struct goev__tls *t = handler_tls(h, &err);
    if (!t)
        return err;
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (!peer)
        return -ENOENT;
    BIO *m = BIO_new(BIO_s_mem());
    if (!m)
        return -ENOMEM;
    X509_NAME_print_ex(m, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
    char *data;
    long n = BIO_get_mem_data(m, &data);
    int rc;
    if (n < 0 || !buf || (size_t)n >= cap) {
        rc = -ENOSPC;
    } else {
        memcpy(buf, data, (size_t)n);
        buf[n] = 0;
        rc = (int)n;
    }
    BIO_free(m);
    ERR_clear_error();
    return rc;
}

#endif /* GOEV_HAVE_OPENSSL */
