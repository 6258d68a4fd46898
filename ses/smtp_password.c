/*
 * smtp_password.c - SES SMTP password derivation (see smtp_password.h).
 *
 * Owns nothing but the recipe; the HMAC chain is SigV4's signing key chain
 * (sigv4_signing_key()) with a fixed date, so the two can never drift apart.
 * Must never log or keep the secret or the result: intermediates are wiped.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ses/sigv4.h"
#include "ses/smtp_password.h"

/* Fixed by AWS: the derivation is a SigV4 key for a date that never changes. */
#define SMTP_PASSWORD_DATE    "11111111"
#define SMTP_PASSWORD_SERVICE "ses"
#define SMTP_PASSWORD_MESSAGE "SendRawEmail"
#define SMTP_PASSWORD_VERSION 0x04

static int region_ok(const char *region)
{
	if (*region == '\0')
		return 0;
	for (; *region; region++)
		if (!(*region >= 'a' && *region <= 'z') && !(*region >= '0' && *region <= '9') &&
		    *region != '-')
			return 0;
	return 1;
}

int smtp_password_derive(const char *secret_access_key, const char *region, char *out,
                         size_t outsize)
{
	unsigned char key[SIGV4_MAC_SIZE], raw[1 + SIGV4_MAC_SIZE];

	if (secret_access_key == NULL || *secret_access_key == '\0' || region == NULL ||
	    !region_ok(region) || out == NULL || outsize < SMTP_PASSWORD_SIZE)
		return -1;
	sigv4_signing_key(secret_access_key, SMTP_PASSWORD_DATE, region, SMTP_PASSWORD_SERVICE,
	                  key);
	raw[0] = SMTP_PASSWORD_VERSION;
	sigv4_hmac_sha256(key, sizeof(key), SMTP_PASSWORD_MESSAGE, strlen(SMTP_PASSWORD_MESSAGE),
	                  raw + 1);
	OPENSSL_cleanse(key, sizeof(key));
	/* 33 bytes encode to exactly 44 characters plus the NUL EVP_EncodeBlock adds. */
	if (EVP_EncodeBlock((unsigned char *)out, raw, sizeof(raw)) != SMTP_PASSWORD_SIZE - 1) {
		OPENSSL_cleanse(raw, sizeof(raw));
		OPENSSL_cleanse(out, outsize);
		return -1;
	}
	OPENSSL_cleanse(raw, sizeof(raw));
	return 0;
}
