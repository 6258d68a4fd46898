/*
 * tls.h - the server side TLS context for the listeners.
 *
 * One SSL_CTX per configuration (reloaded with it on SIGHUP; sessions keep a
 * reference to the one they started with).  TLS 1.2 minimum, forward-secret
 * AEAD ciphers for 1.2, OpenSSL's defaults for 1.3, no renegotiation.
 */
#ifndef SESRELAY_TLS_H
#define SESRELAY_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* NULL with a reason in err.  Refuses a private key others can read. */
SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen);
/* The last OpenSSL error as text (for logs). */
const char *tls_error(char *buf, size_t len);

#endif
