/* tls_testutil.c - the test PKI of the TLS suites.
 *
 * tests/tls_certs.sh makes the certificates once per run of a test binary,
 * in Criterion's runner process (a PRE_ALL report hook, before any test
 * process exists), into a temporary directory named by GOEV_TEST_TLS_CERTS
 * for the test processes; the POST_ALL hook removes it.  A test process
 * that finds no such directory (no hook ran: a debugger's single test)
 * makes one itself, keyed by its parent's pid and published with an atomic
 * rename, so that parallel tests never race.  No key is in the tree. */
#include "tls_testutil.h"

#include "testutil.h"

#include <criterion/hooks.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef TOP_SRCDIR
#define TOP_SRCDIR "."
#endif

#define CERTS_ENV "GOEV_TEST_TLS_CERTS"
static char runner_certs[256];  /* the runner process's directory */
static char certs[256];         /* this test process's directory */

static int make_certs(const char *dir)
{
    const char *argv[] = { "sh", TOP_SRCDIR "/tests/tls_certs.sh", dir, NULL };
    struct tu_output o;
    int st = tu_run(argv, NULL, 60000, &o);
    if (st != 0)
        fprintf(stderr, "tls_certs.sh %s: exit %d\n%s%s", dir, st, o.out, o.err);
    tu_output_free(&o);
    return st;
}

static bool certs_ready(const char *dir)
{
    char p[300];
    snprintf(p, sizeof p, "%s/rogue.pem", dir);
    struct stat sb;
    return stat(p, &sb) == 0 && sb.st_size > 0;
}

static void rm_rf(const char *dir)
{
    const char *argv[] = { "rm", "-rf", dir, NULL };
    tu_run(argv, NULL, 10000, NULL);
}

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    const char *e = getenv(CERTS_ENV);
    if (e && certs_ready(e))
        return;
    snprintf(runner_certs, sizeof runner_certs, "/tmp/goev-tls-certs-XXXXXX");
    if (!mkdtemp(runner_certs) || make_certs(runner_certs) != 0) {
        if (runner_certs[0])
            rm_rf(runner_certs);
        runner_certs[0] = 0;
        return;                 /* the tests make their own */
    }
    setenv(CERTS_ENV, runner_certs, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
    (void)st;
    if (runner_certs[0])
        rm_rf(runner_certs);
}

static void find_certs(void)
{
    const char *e = getenv(CERTS_ENV);
    if (e && certs_ready(e)) {
        snprintf(certs, sizeof certs, "%s", e);
        return;
    }
    snprintf(certs, sizeof certs, "/tmp/goev-tls-certs-run%d", (int)getppid());
    if (certs_ready(certs))
        return;
    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/goev-tls-certs-new-XXXXXX");
    cr_assert(mkdtemp(tmp), "mkdtemp: %s", strerror(errno));
    cr_assert_eq(make_certs(tmp), 0, "tests/tls_certs.sh failed (it needs the openssl command)");
    if (rename(tmp, certs) < 0)         /* another test process was first */
        rm_rf(tmp);
    cr_assert(certs_ready(certs), "no certificates in %s", certs);
}

const char *tu_tls_certs_dir(void)
{
    if (!certs[0])
        find_certs();
    return certs;
}

const char *tu_tls_cert(const char *name)
{
    static char ring[16][512];
    static int next;
    tu_tls_certs_dir();
    char *b = ring[next++ % 16];
    snprintf(b, sizeof ring[0], "%s/%s", certs, name);
    return b;
}
