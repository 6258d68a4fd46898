/*
 * smtp_password_cli.c - "sesrelay smtp-password" (see smtp_password_cli.h).
 *
 * The secret is one line on stdin (40 characters for AWS keys; surrounding
 * blanks and the line end are dropped).  On a terminal the prompt goes to
 * stderr and echo is off while it is typed, so stdout carries nothing but
 * the password and can be redirected into a file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ses/smtp_password.h"
#include "smtp/smtp_password_cli.h"

#define SECRET_MAX 512 /* AWS secrets are 40 characters; anything near this is not one */

static const char usage_text[] =
    "usage: sesrelay smtp-password [--region REGION] < secret-access-key\n"
    "  Reads an IAM user's secret access key on stdin and prints the SES SMTP\n"
    "  password for REGION (default: AWS_REGION, then AWS_DEFAULT_REGION).\n"
    "  The SMTP user name is the access key id.  Only long-term IAM user keys\n"
    "  work: SES refuses passwords derived from temporary credentials.\n";

/* One line from fd 0 into buf (NUL-terminated, blanks and line end trimmed).
 * 0, or -1 (nothing read, or longer than the buffer). */
static int read_secret(char *buf, size_t size)
{
	struct termios old, quiet;
	int tty = isatty(0), echo_off = 0;
	size_t n = 0, start = 0;
	int c, too_long = 0;

	if (tty) {
		fputs("IAM secret access key: ", stderr);
		fflush(stderr);
		if (tcgetattr(0, &old) == 0) {
			quiet = old;
			quiet.c_lflag &= ~(tcflag_t)ECHO;
			echo_off = tcsetattr(0, TCSAFLUSH, &quiet) == 0;
		}
	}
	while ((c = getchar()) != EOF && c != '\n') {
		if (n + 1 < size)
			buf[n++] = (char)c;
		else
			too_long = 1;
	}
	buf[n] = '\0';
	if (echo_off) {
		tcsetattr(0, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	while (n > 0 && (buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = '\0';
	while (buf[start] == ' ' || buf[start] == '\t')
		start++;
	memmove(buf, buf + start, n - start + 1);
	return too_long || buf[0] == '\0' ? -1 : 0;
}

static const char *env_region(void)
{
	const char *r = getenv("AWS_REGION");

	if (r == NULL || *r == '\0')
		r = getenv("AWS_DEFAULT_REGION");
	return r && *r ? r : NULL;
}

int smtp_client_cli_password(int argc, char **argv)
{
	const char *region = NULL;
	char secret[SECRET_MAX], password[SMTP_PASSWORD_SIZE];
	int i, rc;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			return 0;
		}
		if (strcmp(a, "--region") == 0 && i + 1 < argc)
			region = argv[++i];
		else if (strncmp(a, "--region=", 9) == 0)
			region = a + 9;
		else {
			fprintf(stderr, "sesrelay smtp-password: %s '%s'\n",
			        strcmp(a, "--region") == 0 ? "missing value for"
			        : a[0] == '-'              ? "unknown option"
			                                   : "unexpected argument",
			        a);
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (region == NULL)
		region = env_region();
	if (region == NULL || *region == '\0') {
		fprintf(stderr, "sesrelay smtp-password: no region: pass --region REGION or set "
		                "AWS_REGION\n");
		return 2;
	}
	if (read_secret(secret, sizeof(secret)) == -1) {
		OPENSSL_cleanse(secret, sizeof(secret));
		fprintf(stderr, "sesrelay smtp-password: expected one secret access key on "
		                "stdin\n");
		return 1;
	}
	rc = smtp_password_derive(secret, region, password, sizeof(password));
	OPENSSL_cleanse(secret, sizeof(secret));
	if (rc == -1) {
		fprintf(stderr, "sesrelay smtp-password: invalid region '%s' (e.g. us-east-1)\n",
		        region);
		return 2;
	}
	printf("%s\n", password);
	OPENSSL_cleanse(password, sizeof(password));
	if (fflush(stdout) == EOF || ferror(stdout)) {
		fprintf(stderr, "sesrelay smtp-password: cannot write: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
