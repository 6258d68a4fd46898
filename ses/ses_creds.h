/*
 * ses_creds.h - the AWS credentials chain: where the relay's keys come from,
 * and keeping temporary ones fresh without ever blocking the event loop.
 *
 * Order, first source that is configured wins (SPEC.md section 3):
 *   1. [ses] access_key_id / secret_access_key           "config file"
 *   2. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN]
 *   3. the profile (conf->profile, else AWS_PROFILE, else "default") in
 *      AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials, [NAME]) and
 *      AWS_CONFIG_FILE (~/.aws/config, [profile NAME], [default]): static keys
 *      from the credentials file, then credential_process (either file), then
 *      static keys from the config file
 *   4. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, unsigned STS
 *      AssumeRoleWithWebIdentity (AWS_ENDPOINT_URL_STS overrides the endpoint)
 *   5. container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI
 *   6. EC2 IMDSv2 unless AWS_EC2_METADATA_DISABLED=true
 *      (AWS_EC2_METADATA_SERVICE_ENDPOINT overrides the endpoint)
 * A source that is configured but fails (a broken credential_process, an
 * unreachable container endpoint, a profile named but absent) is an error,
 * as in botocore: the chain does not fall through past it.
 *
 * Temporary credentials (with an expiration) are refreshed from the same
 * source 10-15 minutes before they expire; a failed refresh is retried with
 * backoff while the old credentials stay in use until they actually expire.
 * When the first resolution fails, the whole chain is retried in the
 * background the same way, so a daemon can queue mail and deliver later.
 *
 * Must never: block (files are small and local; everything else goes through
 * ses_http or a pipe on the loop), log a secret key or session token (at most
 * the first 4 characters of an access key id), or keep a secret in memory that
 * is not wiped with OPENSSL_cleanse() when it is dropped.
 */
#ifndef SESRELAY_SES_CREDS_H
#define SESRELAY_SES_CREDS_H

#include <stddef.h>
#include <time.h>

#include "ses/sigv4.h"

struct conf;
struct event_base;
struct ses_http;
struct ses_creds;

/*
 * ready(arg, ok, err): the first resolution finished.  err (NULL when ok) is
 * one line that says what to do.  Runs once, always from the loop, never
 * inside ses_creds_start(); ses_creds_free() may be called from inside it.
 */
typedef void (*ses_creds_ready)(void *arg, int ok, const char *err);

/* conf's [ses] profile, keys and region are copied: conf may be freed after.
 * http must outlive the returned object (free this one first). */
struct ses_creds *ses_creds_new(struct event_base *base, struct ses_http *http,
                                const struct conf *conf);
/* Begin resolving; call once. */
void ses_creds_start(struct ses_creds *c, ses_creds_ready ready, void *arg);
/*
 * The current credentials, or NULL (none yet, or expired and not refreshed).
 * Never blocks.  The pointers stay valid until control returns to the loop:
 * sign with them right away, do not keep them.  When session_token is set,
 * send it as X-Amz-Security-Token.
 */
const struct sigv4_credentials *ses_creds_get(struct ses_creds *c);
/* When the current credentials expire; 0 for long-term keys or none. */
time_t ses_creds_expiration(struct ses_creds *c);
/* "environment", "profile work (/root/.aws/credentials)", ...; "none" before the first. */
const char *ses_creds_source(struct ses_creds *c);
/* 1 when the credentials carry a session token (SES refuses SMTP passwords
 * derived from such keys). */
int ses_creds_temporary(struct ses_creds *c);
/*
 * Refresh in the background now, e.g. after SES answered ExpiredToken.  A no-op
 * for long-term keys and while a refresh is already running.
 */
void ses_creds_refresh(struct ses_creds *c);
/* Cancels calls in flight, kills and reaps a credential_process child, wipes
 * every secret.  NULL is fine. */
void ses_creds_free(struct ses_creds *c);

/* --- the pure parts, exported for tests ------------------------------------ */

/*
 * Value of KEY in the profile PROFILE of an AWS shared file's text.  In a
 * config file (is_config) the section is [profile NAME] ([default] or
 * [profile default] for "default"); in a credentials file it is [NAME].
 * Full-line comments (# ;), blank lines, whitespace around names and values
 * and indented sub-sections ("s3 =" followed by deeper lines) are handled.
 * Returns an xmalloc'd value (possibly "") or NULL; *section_found tells
 * whether the profile's section exists at all.
 */
char *ses_creds_profile_value(const char *text, size_t len, const char *profile, int is_config,
                              const char *key, int *section_found);
/*
 * The string value of the top-level field NAME of a JSON object (escapes
 * decoded, UTF-8 out; the last of repeated fields wins).  The whole document
 * is checked: nesting deeper than 16, strings over 16 KiB, bad escapes, lone
 * surrogates, \u0000 and raw control characters make it malformed.  Returns an
 * xmalloc'd string, or NULL with *err one of "malformed JSON", "missing",
 * "not a string".
 */
char *ses_creds_json_string(const char *json, size_t len, const char *name, const char **err);
/*
 * The text of the first <TAG> inside the first <OUTER> element of an XML
 * document (entities &amp; &lt; &gt; &quot; &apos; &#N; decoded), or NULL
 * when absent, nested or malformed.  Enough for STS answers; no more.
 */
char *ses_creds_xml_text(const char *xml, size_t len, const char *outer, const char *tag);
/* "2026-11-28T15:04:05Z", with optional fraction and Z / +HH:MM / -HHMM.
 * Returns 0 and *out, or -1. */
int ses_creds_parse_time(const char *s, time_t *out);

#endif
