/* test_resolve.c - goev_connect and the pool by name: localhost from the
 * system's /etc/hosts, a hosts file of the test's (CARES_HOSTS), and a DNS
 * responder of the test's on 127.0.0.1 (tests/dns_responder.c, pointed to by
 * GOEV_DNS_SERVERS and a resolv.conf of the test's, GOEV_RESOLV_CONF): A and
 * AAAA, the next address after a refused one, the cache and its TTL,
 * lookups shared, NXDOMAIN, SERVFAIL, a server that never answers, answers
 * truncated over UDP and fetched over TCP, cancelling by goev_close and by
 * the reactor's stop, bad names, and the resolver's bad configuration. */
#include "testutil.h"
#include "dns_responder.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a client connection, recording its callbacks -------------------------- */

struct cl {
    goev_handler h;
    char addr[128];
    int timeout_ms;
    int rc;             /* goev_connect's return */
    int opened, failed, err, closed, reason;
    int peer_family;
    int close_now;      /* goev_close right after goev_connect */
};

static int cl_open(goev_handler *h)
{
    struct cl *c = (struct cl *)h;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (goev_peer_addr(h, &ss, &len) == 0)
        TU_STORE(&c->peer_family, ss.ss_family);
    TU_INC(&c->opened);
    goev_close(h);
    return 0;
}

static ssize_t cl_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static void cl_fail(goev_handler *h, int err)
{
    struct cl *c = (struct cl *)h;
    TU_STORE(&c->err, err);
    TU_INC(&c->failed);
}

static void cl_close(goev_handler *h, int reason)
{
    struct cl *c = (struct cl *)h;
    TU_STORE(&c->reason, reason);
    TU_INC(&c->closed);
}

static const struct goev_handler_ops cl_ops = {
    .on_open = cl_open,
    .on_read = cl_read,
    .on_connect_fail = cl_fail,
    .on_close = cl_close,
};

static void do_connect(goev_poller *p, void *arg)
{
    struct cl *c = arg;
    goev_handler_init(&c->h, &cl_ops);
    int rc = goev_connect(p, &c->h, c->addr, c->timeout_ms);
    if (rc == 0 && c->close_now)
        goev_close(&c->h);
    TU_STORE(&c->rc, rc);
}

static void cl_init(struct cl *c, const char *host, int port, int timeout_ms)
{
    memset(c, 0, sizeof *c);
    snprintf(c->addr, sizeof c->addr, "%s:%d", host, port);
    c->timeout_ms = timeout_ms;
    c->rc = 1;
}

/* Connect c from poller p and wait for its on_close. */
__attribute__((unused)) static void connect_wait(goev_poller *p, struct cl *c)
{
    tu_run_on(p, do_connect, c);
    cr_assert_eq(TU_LOAD(&c->rc), 0, "goev_connect(%s): %s", c->addr, goev_strerror(c->rc));
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closed), 15000), "%s: no on_close", c->addr);
}

__attribute__((unused)) static void assert_opened(struct cl *c)
{
    cr_assert_eq(TU_LOAD(&c->opened), 1, "%s: opened %d, failed %d (%s)", c->addr,
                 TU_LOAD(&c->opened), TU_LOAD(&c->failed), goev_strerror(TU_LOAD(&c->err)));
    cr_assert_eq(TU_LOAD(&c->failed), 0);
    cr_assert_eq(TU_LOAD(&c->reason), 0);
}

__attribute__((unused)) static void assert_failed(struct cl *c, int err)
{
    cr_assert_eq(TU_LOAD(&c->opened), 0, "%s opened", c->addr);
    cr_assert_eq(TU_LOAD(&c->failed), 1, "%s: failed %d", c->addr, TU_LOAD(&c->failed));
    cr_assert_eq(TU_LOAD(&c->err), err, "%s: %d (%s), expected %d (%s)", c->addr,
                 TU_LOAD(&c->err), goev_strerror(TU_LOAD(&c->err)), err, goev_strerror(err));
    cr_assert_eq(TU_LOAD(&c->reason), err);
    cr_assert_eq(TU_LOAD(&c->closed), 1);
}

__attribute__((unused)) static struct goev_stats stats_of(goev_reactor *r)
{
    struct goev_stats st;
    cr_assert_eq(goev_stats_get(r, -1, &st), 0);
    return st;
}

/* ---- the fixture: a responder, a resolv.conf, a listener, one poller ------- */

static const struct dnsr_name names[] = {
    {.name = "a.test", .ttl = 300, .a = {"127.0.0.1"}},
    {.name = "ttl.test", .ttl = 1, .a = {"127.0.0.1"}},
    {.name = "nx.test", .mode = DNSR_NXDOMAIN},
    {.name = "fail.test", .mode = DNSR_SERVFAIL},
    {.name = "silent.test", .mode = DNSR_SILENT},
    {.name = "big.test", .mode = DNSR_TRUNCATE, .ttl = 300, .a = {"127.0.0.1"}},
    {.name = "two.test", .ttl = 300, .a = {"127.0.0.1"}, .aaaa = {"::1"}},
    {.name = "dead.test", .ttl = 300, .a = {"127.0.0.3", "127.0.0.4"}},
    {.name = "six.test", .ttl = 300, .aaaa = {"::1"}},
    {.name = "co.test", .ttl = 300, .a = {"127.0.0.1"}},
    {.name = "empty.test", .ttl = 300},
};

static struct dnsr dns;
static char *dir;
static int lfd = -1, port;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

/* The responder as the only name server, one attempt of one second:
 * c-ares 1.18 reads "retrans:" (ms) and "retry:"; later ones also glibc's
 * "timeout:" and "attempts:". */
__attribute__((unused)) static void use_responder(void)
{
    char path[512], servers[64];
    snprintf(path, sizeof path, "%s/resolv.conf", dir);
    write_file(path, "nameserver 127.0.0.1\noptions retrans:1000 retry:1 timeout:1 attempts:1\n");
    snprintf(servers, sizeof servers, "127.0.0.1:%d", dns.port);
    setenv("GOEV_RESOLV_CONF", path, 1);
    setenv("GOEV_DNS_SERVERS", servers, 1);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    dir = tu_tmpdir();
    cr_assert_eq(dnsr_start(&dns, names, (int)(sizeof names / sizeof names[0])), 0);
    lfd = tu_listen_tcp4(128, &port);
    cr_assert(lfd >= 0);
    unsetenv("GOEV_RESOLV_CONF");
    unsetenv("GOEV_DNS_SERVERS");
    unsetenv("CARES_HOSTS");
}

static void teardown(void)
{
    dnsr_stop(&dns);
    if (lfd >= 0)
        close(lfd);
    tu_tmpdir_free(dir);
}

TestSuite(resolve, .init = setup, .fini = teardown, .timeout = 60.0);

#ifdef GOEV_HAVE_CARES

/* ---- names from hosts files ------------------------------------------------ */

Test(resolve, localhost_from_etc_hosts)
{
    /* The system's own configuration: /etc/hosts has localhost. */
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "localhost", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_opened(&c);
    cr_assert_eq(TU_LOAD(&c.peer_family), AF_INET);
    tu_reactor_stop_wait(r);
    cr_assert_geq(stats_of(r).resolves, 1);
    goev_reactor_free(r);
}

Test(resolve, hosts_file_of_ours)
{
    char path[512];
    snprintf(path, sizeof path, "%s/hosts", dir);
    write_file(path, "# test\n127.0.0.1 mine.test other.test\n");
    setenv("CARES_HOSTS", path, 1);
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "other.test", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_opened(&c);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(dns.other_count, 0, "a hosts-file name went to DNS");
}

/* ---- DNS ------------------------------------------------------------------- */

Test(resolve, a_record_then_cached)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct cl c1, c2;
    cl_init(&c1, "a.test", port, 5000);
    connect_wait(p, &c1);
    assert_opened(&c1);
    cr_assert_eq(dnsr_count(&dns, "a.test", 1), 1);
    cr_assert_eq(dnsr_count(&dns, "a.test", 28), 1);
    /* Within the TTL (300 s): no question, from the cache, and the name
     * is case-insensitive. */
    cl_init(&c2, "A.Test", port, 5000);
    connect_wait(p, &c2);
    assert_opened(&c2);
    cr_assert_eq(dnsr_count(&dns, "a.test", 1), 1);
    struct goev_stats st = stats_of(r);
    cr_assert_eq(st.resolves, 1);
    cr_assert_eq(st.resolve_hits, 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, ttl_expiry_asks_again)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct cl c;
    cl_init(&c, "ttl.test", port, 5000);
    connect_wait(p, &c);
    assert_opened(&c);
    cr_assert_eq(dnsr_count(&dns, "ttl.test", 1), 1);
    /* The TTL is one second. */
    tu_sleep_ms(1500);
    cl_init(&c, "ttl.test", port, 5000);
    connect_wait(p, &c);
    assert_opened(&c);
    cr_assert_eq(dnsr_count(&dns, "ttl.test", 1), 2, "an expired answer was used");
    cr_assert_eq(stats_of(r).resolve_hits, 0);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, nxdomain_is_enoname)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct cl c;
    cl_init(&c, "nx.test", port, 5000);
    connect_wait(p, &c);
    assert_failed(&c, GOEV_ENONAME);
    /* Failures are not cached. */
    cl_init(&c, "nx.test", port, 5000);
    connect_wait(p, &c);
    assert_failed(&c, GOEV_ENONAME);
    cr_assert_eq(dnsr_count(&dns, "nx.test", 1), 2);
    /* A name without any address is no better. */
    cl_init(&c, "empty.test", port, 5000);
    connect_wait(p, &c);
    assert_failed(&c, GOEV_ENONAME);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, servfail_is_ednsfail)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "fail.test", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_failed(&c, GOEV_EDNSFAIL);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, silent_server_times_out)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    uint64_t t0 = tu_now_ms();
    cl_init(&c, "silent.test", port, 0);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_failed(&c, GOEV_EDNSTIMEDOUT);
    /* resolv.conf: one attempt of one second */
    cr_assert_geq(tu_now_ms() - t0, 900);
    cr_assert_geq(dnsr_count(&dns, "silent.test", 1), 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, connect_timeout_covers_the_lookup)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "silent.test", port, 200);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_failed(&c, -ETIMEDOUT);
    /* The lookup goes on without the connection: its end calls nothing. */
    tu_sleep_ms(1500);
    cr_assert_eq(TU_LOAD(&c.failed), 1);
    cr_assert_eq(TU_LOAD(&c.closed), 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, truncated_answer_retried_over_tcp)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "big.test", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_opened(&c);
    cr_assert_geq(dnsr_tcp_count(&dns), 1, "no question came over TCP");
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

/* ::1 and 127.0.0.1, listening on 127.0.0.1 only: whichever comes first,
 * the connect ends on the one that listens. */
Test(resolve, next_address_after_refused)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "two.test", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_opened(&c);
    cr_assert_eq(TU_LOAD(&c.peer_family), AF_INET);
    /* With IPv6 on loopback, RFC 6724 puts ::1 first (precedence 50 over
     * IPv4's 35): it was refused, and the connect went on. */
    int s6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool v6 = s6 >= 0 && bind(s6, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (s6 >= 0)
        close(s6);
    if (v6)
        cr_assert_eq(stats_of(r).connect_next, 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

/* Two addresses, neither listening: both are tried, the last error wins. */
Test(resolve, every_address_refused)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "dead.test", port, 5000);
    connect_wait(goev_reactor_poller(r, 0), &c);
    assert_failed(&c, -ECONNREFUSED);
    cr_assert_eq(stats_of(r).connect_next, 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

/* AAAA only, and bound to an IPv4 address: only A is asked for. */
struct ex_args {
    struct cl *c;
    struct goev_connect_opts *o;
};

static void do_connect_ex(goev_poller *p, void *arg)
{
    struct ex_args *x = arg;
    goev_handler_init(&x->c->h, &cl_ops);
    TU_STORE(&x->c->rc, goev_connect_ex(p, &x->c->h, x->c->addr, x->o));
}

Test(resolve, bind_addr_picks_the_family)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "six.test", port, 5000);
    struct goev_connect_opts o;
    goev_connect_opts_init(&o);
    o.bind_addr = "127.0.0.1:0";
    struct ex_args a = {&c, &o};
    tu_run_on(goev_reactor_poller(r, 0), do_connect_ex, &a);
    cr_assert_eq(TU_LOAD(&c.rc), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c.closed), 15000));
    assert_failed(&c, GOEV_ENONAME);
    cr_assert_eq(dnsr_count(&dns, "six.test", 28), 0);
    cr_assert_eq(dnsr_count(&dns, "six.test", 1), 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

/* Connects to one name while its lookup is in flight share it. */
#define NCO 5
static struct cl co[NCO];

static void connect_many(goev_poller *p, void *arg)
{
    (void)arg;
    for (int i = 0; i < NCO; i++)
        do_connect(p, &co[i]);
}

Test(resolve, lookups_shared)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    for (int i = 0; i < NCO; i++)
        cl_init(&co[i], "co.test", port, 5000);
    tu_run_on(goev_reactor_poller(r, 0), connect_many, NULL);
    for (int i = 0; i < NCO; i++) {
        cr_assert_eq(TU_LOAD(&co[i].rc), 0);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&co[i].closed), 15000));
        assert_opened(&co[i]);
    }
    cr_assert_eq(dnsr_count(&dns, "co.test", 1), 1);
    cr_assert_eq(stats_of(r).resolves, 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

/* ---- cancelling -------------------------------------------------------------- */

Test(resolve, close_during_lookup)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "silent.test", port, 0);
    c.close_now = 1;
    connect_wait(goev_reactor_poller(r, 0), &c);
    cr_assert_eq(TU_LOAD(&c.reason), 0);
    cr_assert_eq(TU_LOAD(&c.failed), 0);
    cr_assert_eq(TU_LOAD(&c.opened), 0);
    /* Past the resolver's timeout: nothing more comes. */
    tu_sleep_ms(1500);
    cr_assert_eq(TU_LOAD(&c.failed), 0);
    cr_assert_eq(TU_LOAD(&c.closed), 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, stop_with_lookups_in_flight)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    for (int i = 0; i < NCO; i++)
        cl_init(&co[i], i % 2 ? "silent.test" : "co.test", port, 0);
    /* co.test's answer may come first or not: either way all close. */
    tu_run_on(goev_reactor_poller(r, 0), connect_many, NULL);
    tu_reactor_stop_wait(r);
    for (int i = 0; i < NCO; i++) {
        cr_assert_eq(TU_LOAD(&co[i].closed), 1);
        if (i % 2) {
            cr_assert_eq(TU_LOAD(&co[i].reason), -ECANCELED);
            cr_assert_eq(TU_LOAD(&co[i].failed), 0);
        }
    }
    goev_reactor_free(r);
}

/* Connects by name before the reactor runs, freed without running. */
Test(resolve, free_unrun_reactor_with_lookup)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    struct cl c;
    cl_init(&c, "silent.test", port, 0);
    do_connect(goev_reactor_poller(r, 0), &c);
    cr_assert_eq(c.rc, 0);
    goev_reactor_free(r);
    cr_assert_eq(c.closed, 1);
    cr_assert_eq(c.reason, -ECANCELED);
}

/* ---- the pool ------------------------------------------------------------------ */

struct preq {
    goev_pool_req req;
    goev_pool *pool;
    int done, err;
};

static void pool_cb(goev_pool_req *req, goev_handler *conn, int err)
{
    struct preq *q = (struct preq *)req;
    if (conn)
        goev_pool_release(conn, 0);
    TU_STORE(&q->err, err);
    TU_INC(&q->done);
}

static struct goev_pool_opts popts;
static const struct goev_handler_ops pool_app_ops = {.on_read = cl_read};

static void pool_start(goev_poller *p, void *arg)
{
    struct preq *q = arg;
    char addr[64];
    snprintf(addr, sizeof addr, "%s:%d", (char *)q->req.user, port);
    goev_pool_opts_init(&popts);
    popts.ops = &pool_app_ops;
    int rc = goev_pool_new(&q->pool, p, addr, &popts);
    TU_CHECK(rc == 0, "goev_pool_new(%s): %d", addr, rc);
    if (rc == 0)
        TU_CHECK(goev_pool_acquire(q->pool, &q->req, 5000, pool_cb) == 0, "acquire");
}

static void pool_end(goev_poller *p, void *arg)
{
    goev_pool_free(((struct preq *)arg)->pool);
}

static void pool_by_name(const char *name, int want)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct preq q;
    memset(&q, 0, sizeof q);
    goev_pool_req_init(&q.req);
    q.req.user = (void *)name;
    goev_poller *p = goev_reactor_poller(r, 0);
    tu_run_on(p, pool_start, &q);
    tu_assert_no_failures();
    cr_assert(TU_WAIT_FOR(TU_LOAD(&q.done), 15000));
    cr_assert_eq(TU_LOAD(&q.err), want, "%s: %d (%s)", name, TU_LOAD(&q.err),
                 goev_strerror(TU_LOAD(&q.err)));
    tu_run_on(p, pool_end, &q);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(resolve, pool_by_name) { pool_by_name("a.test", 0); }
Test(resolve, pool_name_not_found) { pool_by_name("nx.test", GOEV_ENONAME); }

/* ---- refused at once ------------------------------------------------------------- */

struct sync_case {
    const char *addr;
    int want;
};

static void run_sync(goev_poller *p, void *arg)
{
    struct sync_case *k = arg;
    struct cl c;
    goev_handler_init(&c.h, &cl_ops);
    int rc = goev_connect(p, &c.h, k->addr, 1000);
    TU_CHECK(rc == k->want, "goev_connect(%s) = %d, expected %d", k->addr, rc, k->want);
    TU_CHECK(goev_handler_poller(&c.h) == NULL, "%s: handler attached after a failure", k->addr);
}

Test(resolve, bad_names_refused)
{
    use_responder();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct sync_case cases[] = {
        {"bad..name:80", -EINVAL}, {"a.test:70000", -EINVAL}, {"a.test:", -EINVAL},
        {"a.test", -EINVAL},       {"1.2.3.400:80", -EINVAL}, {".a.test:80", -EINVAL},
        {"a b.test:80", -EINVAL},  {"a.test:8x", -EINVAL},    {":80x", -EINVAL},
        {"x:y:80", -EINVAL},       {"unix:", -EINVAL},        {"[a.test]:80", -EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        tu_run_on(goev_reactor_poller(r, 0), run_sync, &cases[i]);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    tu_assert_no_failures();
    cr_assert_eq(dns.other_count, 0);
}

Test(resolve, bad_configuration_refused)
{
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-resolv.conf", dir);
    setenv("GOEV_RESOLV_CONF", missing, 1);
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct sync_case k = {"a.test:80", -ENOENT};
    tu_run_on(goev_reactor_poller(r, 0), run_sync, &k);
    unsetenv("GOEV_RESOLV_CONF");
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);

    setenv("GOEV_DNS_SERVERS", "not a server list", 1);
    r = tu_reactor_new(1);
    tu_reactor_start(r);
    k.want = -EINVAL;
    tu_run_on(goev_reactor_poller(r, 0), run_sync, &k);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    tu_assert_no_failures();
}

#else /* !GOEV_HAVE_CARES */

static void run_noresolv(goev_poller *p, void *arg)
{
    struct cl *c = arg;
    goev_handler_init(&c->h, &cl_ops);
    TU_STORE(&c->rc, goev_connect(p, &c->h, c->addr, 1000));
}

Test(resolve, names_need_c_ares)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct cl c;
    cl_init(&c, "localhost", port, 1000);
    tu_run_on(goev_reactor_poller(r, 0), run_noresolv, &c);
    cr_assert_eq(TU_LOAD(&c.rc), GOEV_ENORESOLV);
    cr_assert_eq(TU_LOAD(&c.closed), 0);
    goev_pool *pool = NULL;
    struct goev_pool_opts o;
    goev_pool_opts_init(&o);
    o.ops = &cl_ops;
    tu_reactor_stop_wait(r);
    cr_assert_eq(goev_pool_new(&pool, goev_reactor_poller(r, 0), "localhost:80", &o),
                 GOEV_ENORESOLV);
    goev_reactor_free(r);
}

#endif

Test(resolve, strerror_names_the_codes)
{
    cr_assert_str_eq(goev_strerror(GOEV_ENONAME),
                     "Name not found (no such name, or no address for it)");
    cr_assert_str_eq(goev_strerror(GOEV_EDNSTIMEDOUT), "Name servers did not answer in time");
    cr_assert_str_eq(goev_strerror(GOEV_EDNSFAIL), "Name resolution failed");
    cr_assert(strstr(goev_strerror(GOEV_ENORESOLV), "c-ares"));
    cr_assert_str_eq(goev_strerror(-ECONNREFUSED), "Connection refused");
    cr_assert_str_eq(goev_strerror(-999999), "Unknown error");
    cr_assert_str_eq(goev_strerror(12345), "Unknown error");
}
