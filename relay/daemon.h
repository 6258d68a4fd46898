/*
 * daemon.h - the long-running relay: start-up, signals, reload, shutdown.
 */
#ifndef SESRELAY_DAEMON_H
#define SESRELAY_DAEMON_H

/* Runs in the foreground until SIGTERM/SIGINT.  Returns an exit code. */
int daemon_run(const char *config_path);

#endif
