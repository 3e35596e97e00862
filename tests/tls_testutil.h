/* tls_testutil.h - the test PKI shared by the TLS suites (tests/test_tls,
 * tests/test_tls_client). */
#ifndef GOEV_TLS_TESTUTIL_H
#define GOEV_TLS_TESTUTIL_H

/* The path of the test certificate or key `name` ("ca.pem", "server.key":
 * the files tests/tls_certs.sh makes), in one of a ring of 16 static
 * buffers.  cr_asserts that the certificates exist.  Test thread. */
const char *tu_tls_cert(const char *name);
/* The directory that holds them.  Test thread. */
const char *tu_tls_certs_dir(void);

#endif
