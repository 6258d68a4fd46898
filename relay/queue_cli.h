/*
 * queue_cli.h - "sesrelay queue list|show|delete|flush|hold|release".
 */
#ifndef SESRELAY_QUEUE_CLI_H
#define SESRELAY_QUEUE_CLI_H

/* argv[0] is "queue"; "-c FILE" has already been taken out by main.
 * Returns the exit code: 0 ok, 1 runtime failure (also: no such message),
 * 2 usage, 78 config error. */
int queue_cli(int argc, char **argv, const char *config_path);

#endif
