/* The trainbus command line: shared declarations of the subcommands. */
#ifndef TB_CLI_H
#define TB_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "trainbus/client.h"

/* Exit codes, documented in `trainbus --help` and docs/CLI.md. */
enum {
  TB_EXIT_OK = 0,      /* done */
  TB_EXIT_FAILED = 1,  /* refused by the daemon, or the run failed */
  TB_EXIT_USAGE = 2,   /* bad arguments or a bad job file */
  TB_EXIT_CONNECT = 3, /* cannot connect */
};

int tb_cli_train(int argc, char **argv);

/* The network subcommands (remote.c, watch.c). argv[0] is the subcommand. */
int tb_cli_status(int argc, char **argv);
int tb_cli_runs(int argc, char **argv);
int tb_cli_history(int argc, char **argv);
int tb_cli_control(int argc, char **argv); /* set-lr, stop, pause, resume, checkpoint, cancel */
int tb_cli_submit(int argc, char **argv);
int tb_cli_watch(int argc, char **argv);
/* watch through a broker (watch_broker.c): watch hands over when given --nats
 * or --mqtt. */
int tb_cli_watch_broker(int argc, char **argv);

/* Where to connect and as whom, from the options every network subcommand
 * takes; see tb_cli_conn_opt. */
typedef struct tb_cli_conn_s {
  const char *cmd;       /* "trainbus watch", for messages */
  const char *connect;   /* --connect, or NULL */
  const char *token;     /* --token, or NULL */
  const char *state_dir; /* --state-dir, or NULL */
  const char *run;       /* --run, or NULL */
  int timeout_ms;        /* --timeout SECONDS * 1000; 0 = the library's default */
  /* TLS: --tls (or a tls:// address), --cacert FILE, --insecure, --cert
   * FILE and --key FILE (a client certificate); the files default to
   * TRAINBUS_CACERT, TRAINBUS_CERT and TRAINBUS_KEY. */
  bool tls, insecure;
  const char *cacert, *cert, *key;
} tb_cli_conn_t;

/* The options' help text, for each subcommand's usage. */
extern const char tb_cli_conn_help[];

/* Consumes argv[*i] (and its value) if it is a connection option: returns 1
 * and advances *i past the value, 0 if argv[*i] is not one, or -1 after
 * printing an error (a missing or bad value). */
int tb_cli_conn_opt(tb_cli_conn_t *o, int argc, char **argv, int *i);

/* Resolves address and token (options, then TRAINBUS_ADDR / TRAINBUS_TOKEN,
 * then the files the daemon wrote in the state directory, read again at every
 * reconnect; that directory's token is sent only to its own address) and
 * connects.
 * Returns TB_EXIT_OK with *c set, or prints one line and returns an exit code. */
int tb_cli_open(const tb_cli_conn_t *o, tb_role_t role, tb_client_t **c);
/* The same resolution without connecting, into *opts (zeroed first): the
 * state directory (written to dir, cap bytes, which opts->state_dir points
 * to), the address and token given (option, then environment; NULL when
 * neither: the directory's files are read at connect) and the TLS options
 * (with --insecure's warning printed). Role, name and timeouts are the
 * caller's. */
void tb_cli_client_opts(const tb_cli_conn_t *o, char *dir, size_t cap, tb_client_opts_t *opts);

/* The run to act on: --run, else the only run that is not in a final state,
 * else (when newest_ok: for commands that only read) the newest run.
 * Returns TB_EXIT_OK, or prints one line and returns an exit code. */
int tb_cli_pick_run(const tb_cli_conn_t *o, tb_client_t *c, bool newest_ok,
                    char run[TB_PROTO_RUN_MAX]);

/* Prints "CMD: message" for a failed call and returns its exit code: 1 when
 * the daemon refused, 3 when it could not be reached or the connection broke,
 * 2 for an argument the library refused. */
int tb_cli_fail(const char *cmd, const tb_client_err_t *err);

/* The line `trainbus watch` prints for a state or a control event (epoch
 * 1-based, batch 0-based, as the progress bar counts them), flushed; shared
 * by watch.c and watch_broker.c. */
void tb_cli_print_state(const tb_event_t *ev);
void tb_cli_print_control(const tb_event_t *ev);

#endif
