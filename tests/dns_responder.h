/* dns_responder.h - a small DNS server for the resolver's tests, on a thread
 * of the test program: UDP and TCP on 127.0.0.1 (one port for both), the
 * answers chosen per name.  Only what the tests need: one question per
 * message, A and AAAA, no EDNS, no compression but the answers' pointer to
 * the question. */
#ifndef GOEV_DNS_RESPONDER_H
#define GOEV_DNS_RESPONDER_H

#include <pthread.h>
#include <stdint.h>

enum dnsr_mode {
    DNSR_ANSWER,    /* the records below (none of a type: NOERROR, no data) */
    DNSR_NXDOMAIN,  /* RCODE 3 */
    DNSR_SERVFAIL,  /* RCODE 2 */
    DNSR_SILENT,    /* never answers */
    DNSR_TRUNCATE,  /* UDP: TC set and no answers; TCP: the records */
};

#define DNSR_MAX_NAMES 16
#define DNSR_MAX_RR 4

struct dnsr_name {
    const char *name;           /* without the final dot; case is ignored */
    enum dnsr_mode mode;
    uint32_t ttl;
    const char *a[DNSR_MAX_RR];     /* IPv4 addresses, NULL-terminated */
    const char *aaaa[DNSR_MAX_RR];  /* IPv6 addresses */
};

struct dnsr {
    int port;                   /* the port of both sockets */
    /* private */
    int udp, tcp, wake[2];
    int clients[8];
    pthread_t th;
    const struct dnsr_name *names;
    int nnames;
    int count[DNSR_MAX_NAMES][2];   /* questions per name: [A, AAAA] (atomic) */
    int tcp_count;                  /* questions over TCP (atomic) */
    int other_count;                /* questions for names not in the table */
};

/* Start answering names[0..n) (unknown names get NXDOMAIN).  0 or -errno. */
int dnsr_start(struct dnsr *d, const struct dnsr_name *names, int n);
/* Stop the thread and close everything. */
void dnsr_stop(struct dnsr *d);
/* Questions seen for name: qtype 1 (A) or 28 (AAAA). */
int dnsr_count(struct dnsr *d, const char *name, int qtype);
/* Questions seen over TCP. */
int dnsr_tcp_count(struct dnsr *d);

#endif
