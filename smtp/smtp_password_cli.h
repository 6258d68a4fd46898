/*
 * smtp_password_cli.h - "sesrelay smtp-password [--region R]": read an IAM
 * secret access key on stdin, print the SES SMTP password derived from it
 * (SPEC.md section 2; the recipe is ses/smtp_password.c).
 *
 * Owns the command line only.  Must never echo the secret (a terminal gets
 * echo turned off), write it anywhere, or leave it in memory unwiped.
 */
#ifndef SESRELAY_SMTP_PASSWORD_CLI_H
#define SESRELAY_SMTP_PASSWORD_CLI_H

/*
 * argv[0] is the command word ("smtp-password"); -c FILE must already be
 * taken out by the caller.  Region: --region R (or --region=R), else
 * AWS_REGION, else AWS_DEFAULT_REGION.  Returns the exit code: 0 with the
 * password and a newline on stdout; 2 for a usage error (unknown option,
 * extra argument, no or invalid region); 1 when no secret could be read.
 */
int smtp_client_cli_password(int argc, char **argv);

#endif
