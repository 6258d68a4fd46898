/*
 * smtp_password.h - the SES SMTP password derived from an IAM secret key.
 *
 * Owns the derivation only (SES-NOTES.md, "SMTP password"): the SMTP user name
 * is the access key id, the password is base64(0x04 || HMAC chain over the
 * secret with the fixed date "11111111", the region, "ses", "aws4_request" and
 * "SendRawEmail").  Only long-term IAM user keys work: SES refuses passwords
 * derived from temporary (session) credentials, so callers must not derive one
 * from an STS secret.
 *
 * Must never log, print or keep the secret or the derived password; the caller
 * owns the output buffer and should wipe it (OPENSSL_cleanse) when done.
 */
#ifndef SESRELAY_SMTP_PASSWORD_H
#define SESRELAY_SMTP_PASSWORD_H

#include <stddef.h>

/* 44 base64 characters (33 bytes) and a NUL. */
#define SMTP_PASSWORD_SIZE 45

/*
 * Derive the SES SMTP password for region from an IAM secret access key into
 * out (at least SMTP_PASSWORD_SIZE bytes).  Returns 0, or -1 when the secret
 * or region is empty, the region is not lowercase letters, digits and '-' (as AWS
 * spells them), or out is too small.
 */
int smtp_password_derive(const char *secret_access_key, const char *region, char *out,
                         size_t outsize);

#endif
