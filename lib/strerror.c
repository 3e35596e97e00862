/* strerror.c - goev_strerror: negative errnos and goev's own codes. */
#include "goev-internal.h"

#include <string.h>

const char *goev_strerror(int err)
{
    switch (err) {
    case GOEV_ENONAME: return "Name not found (no such name, or no address for it)";
    case GOEV_EDNSTIMEDOUT: return "Name servers did not answer in time";
    case GOEV_EDNSFAIL: return "Name resolution failed";
    case GOEV_ENORESOLV: return "Name resolution not built in (goev without c-ares)";
    case GOEV_ETLS: return "TLS handshake failed";
    case GOEV_ETLSVERIFY: return "TLS peer certificate did not verify";
    case GOEV_ETLSTIMEDOUT: return "TLS handshake timed out";
    case GOEV_ETLSPROTO: return "TLS protocol error (bad record or fatal alert)";
    case GOEV_ETLSRENEG: return "TLS renegotiation refused";
    case GOEV_ETLSTRUNC: return "TLS connection truncated inside a record";
    case GOEV_ENOTLS: return "TLS not built in (goev without OpenSSL)";
    case 0: return "Success";
    default: break;
    }
    /* strerrordesc_np is glibc's thread-safe, locale-free table lookup;
     * strerror may use a shared buffer for unknown numbers. */
    const char *s = err < 0 && err > -4096 ? strerrordesc_np(-err) : NULL;
    return s ? s : "Unknown error";
}
