/*
 * tls.c - building the listeners' TLS context (see tls.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtp/tls.h"

/* Mozilla "intermediate" for TLS 1.2: ECDHE with AES-GCM or ChaCha20. */
#define TLS12_CIPHERS                                                                    \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                     \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                     \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

const char *tls_error(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (e == 0)
		snprintf(buf, len, "unknown TLS error");
	else
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
	char ebuf[256];
	struct stat st;
	SSL_CTX *ctx;

	if (cert == NULL || key == NULL) {
		snprintf(err, errlen, "[tls] certificate and private_key are needed for TLS");
		return NULL;
	}
	if (stat(key, &st) == -1) {
		snprintf(err, errlen, "[tls] private_key %s: %s", key, strerror(errno));
		return NULL;
	}
	if (st.st_mode & (S_IROTH | S_IWOTH)) {
		snprintf(err, errlen,
		    "[tls] private_key %s is readable by other users (mode %03o): chmod 600 %s", key,
		    (unsigned)(st.st_mode & 0777), key);
		return NULL;
	}
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errlen, "TLS: %s", tls_error(ebuf, sizeof(ebuf)));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* 5000 idle TLS sessions stay small */
	if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(err, errlen, "[tls] certificate %s: %s", cert, tls_error(ebuf, sizeof(ebuf)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "[tls] private_key %s: %s (does it match the certificate?)", key,
		    tls_error(ebuf, sizeof(ebuf)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}
