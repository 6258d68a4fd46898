/*
 * main.c - command line: pick the command word, find the config, dispatch.
 *
 * "-c FILE" is accepted before or after the command word by every command;
 * SESRELAY_CONFIG replaces the default path.  Exit codes: 0 ok, 1 runtime
 * failure, 2 usage, 78 config error (SPEC.md section 2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "relay/check.h"
#include "relay/daemon.h"
#include "relay/queue_cli.h"
#include "relay/sendmail.h"
#include "relay/users.h"
#include "smtp/smtp_password_cli.h"

#ifndef SESRELAY_VERSION
#define SESRELAY_VERSION "0.1.0"
#endif

#define EX_USAGE_ 2

static const char usage_text[] =
    "usage: sesrelay [-c FILE]                 run the relay in the foreground\n"
    "       sesrelay check [-c FILE]           validate the config (and, online, SES and DNS)\n"
    "       sesrelay queue list [--json] | show ID | delete ID | flush [ID] | hold ID | release ID\n"
    "       sesrelay sendmail [-t] [-i] [-f FROM] [-F NAME] [--] [RCPT...]\n"
    "       sesrelay passwd [USER [SENDER...]]\n"
    "       sesrelay smtp-password [--region R]\n"
    "       sesrelay --version | --help\n"
    "\n"
    "FILE defaults to $SESRELAY_CONFIG or /etc/sesrelay/relay.ini.\n";

static void usage(FILE *f)
{
	fputs(usage_text, f);
}

/* Remove "-c FILE" / "-cFILE" / "--config FILE" from argv wherever it is. */
static int take_config(int *argc, char **argv, const char **path)
{
	int i, j;

	for (i = 1; i < *argc; i++) {
		int n = 0;
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= *argc) {
				fprintf(stderr, "sesrelay: %s needs a file name\n", argv[i]);
				return -1;
			}
			*path = argv[i + 1];
			n = 2;
		} else if (strncmp(argv[i], "-c", 2) == 0 && argv[i][2] != '\0' &&
			   strcmp(argv[i], "-check") != 0) {
			*path = argv[i] + 2;
			n = 1;
		}
		if (n) {
			for (j = i; j + n <= *argc; j++)
				argv[j] = argv[j + n];
			*argc -= n;
			i--;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *config = NULL;
	const char *cmd;

	if (take_config(&argc, argv, &config) == -1) {
		usage(stderr);
		return EX_USAGE_;
	}
	if (config == NULL)
		config = conf_default_path();
	if (sendmail_invoked_as(argv[0])) /* a /usr/sbin/sendmail symlink */
		return sendmail_main(argc, argv, config);
	if (argc < 2)
		return daemon_run(config);
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
		printf("sesrelay %s\n", SESRELAY_VERSION);
		return 0;
	}
	if (strcmp(cmd, "passwd") == 0)
		return users_cli_passwd(argc, argv);
	if (strcmp(cmd, "queue") == 0)
		return queue_cli(argc - 1, argv + 1, config);
	if (strcmp(cmd, "sendmail") == 0)
		return sendmail_main(argc - 1, argv + 1, config);
	if (strcmp(cmd, "smtp-password") == 0)
		return smtp_client_cli_password(argc - 1, argv + 1);
	if (strcmp(cmd, "check") == 0)
		return check_main(argc, argv, config);
	fprintf(stderr, "sesrelay: unknown command or option '%s'\n", cmd);
	usage(stderr);
	return EX_USAGE_;
}
