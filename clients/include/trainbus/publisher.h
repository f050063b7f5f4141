/* The publisher: puts a training loop that runs in this process on a
 * trainbus daemon as a trainer (docs/PROTOCOL.md section 13), so that the
 * daemon's clients watch and steer it exactly like a run the daemon trains.
 *
 * It is a core callback (trainbus/callback.h): add tb_publisher_callback()
 * to the loop's callback list like any callback (last, as Keras appends its
 * History after the user's callbacks), and give the loop's control block
 * (tb_fit_opts_t.control, or the tb_control_t a hand-written loop applies at
 * every batch boundary) in the options: the controls observers send (set_lr,
 * stop, pause, resume, checkpoint) are written into it, and so take effect at
 * the next batch boundary, as a daemon run's do.
 *
 * Library: tb_publisher (clients/lib/publisher.c), apart from the client
 * library tb_client because it links core, which the client library does
 * not (its types are core's callback and control block; the client library
 * stays usable by programs that never train). Link tb_publisher, tb_client
 * and tb_core.
 *
 * The loop never waits for the network: each hook copies its event into a
 * bounded queue (about 0.4 us of the loop thread's CPU, 1.7 times a daemon
 * run's publisher; in wall time a few us on a busy 2-core machine, where
 * waking the I/O thread can hand it the loop's core: tests/bench/trainer)
 * and the I/O, encoding and reconnecting happen on the publisher's own
 * thread. Past the bound, batch
 * events are dropped and counted (the daemon tells subscribers "dropped");
 * lifecycle events never are. The one wait is lockstep: at a hook a lockstep
 * subscriber asked for, the hook waits for the daemon's "continue" up to the
 * subscriber's timeout (plus a second's grace), then applies the actions it
 * carried (a rate, a stop) in the hook, as a local callback's would. A lost
 * connection ends a wait at once.
 *
 * Reconnecting: a lost connection is retried (every 0.1 s, then up to every
 * second) for reconnect_ms, reading the state directory's address and token
 * again (trainbusd restarted with --resume may listen elsewhere); the run is
 * attached again with the trainer's seq, and the events the daemon had not
 * taken are sent again: no gap, no duplicate.
 *
 * Threads: tb_publisher_new, _finish and _free from the loop's thread (or
 * any one thread); the callback's hooks on the loop's thread, as any
 * callback's; tb_publisher_stats and tb_publisher_run from any thread. */
#ifndef TRAINBUS_PUBLISHER_H
#define TRAINBUS_PUBLISHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trainbus/callback.h"
#include "trainbus/client.h"
#include "trainbus/control.h"

typedef struct tb_publisher_s tb_publisher_t;

typedef struct tb_publisher_opts_s {
  /* Where the daemon is and the token, as tb_client_opts_t's addr, token and
   * state_dir (the control token or a trainer token). Copied. */
  const char *addr, *token, *state_dir;
  /* Shown in the daemon's log and as "by" ("client 7 (NAME)"); NULL:
   * "trainbus-publisher". Copied. */
  const char *client_name;
  /* What is trained: the run's name in `runs` and `status` (a job's name).
   * NULL: none. Copied. */
  const char *name;
  /* A summary of the model (text, at most TB_PROTO_MODEL_MAX - 1 bytes, e.g.
   * tb_model_summary's), shown in `status`. NULL: none. Copied. */
  const char *model;
  int epochs; /* epochs planned; 0: unknown */
  int steps;  /* batches per epoch; 0: unknown */
  /* The learning rate at the start, for status before the first event; 0:
   * not said. */
  double lr;
  /* The loop's control block, which received controls are written into (its
   * notify function is set to the publisher's, which reports each applied
   * action back). NULL: the loop takes no control (requests are refused). */
  tb_control_t *control;
  /* The loop can write checkpoints (it has a checkpoint directory): the
   * daemon's `checkpoint` is forwarded; otherwise refused there. */
  bool checkpoints;
  /* Continue this run (its id, from tb_publisher_run of an earlier process)
   * rather than open a new one; NULL or "": a new run. */
  const char *run;
  /* With run: the loop continues from a checkpoint written with this
   * publisher in its callback list. train_begin is then no event (its
   * observers saw it), and the trainer's seq comes from the checkpoint, so
   * the events the run holds already are not sent again. */
  bool resuming;
  /* Bytes of events the queue holds before batch events are dropped;
   * 0: 8 MiB. */
  size_t queue_bytes;
  int connect_timeout_ms; /* each connect and handshake; 0: 5000 */
  int reconnect_ms;       /* how long to keep reconnecting; 0: 60000; < 0: forever */
  /* TLS, as tb_client_opts_t's fields of the same names (on with tls or a
   * "tls://" addr; the server's certificate checked against ca_file, or
   * the system's CAs; insecure skips the check; cert_file and key_file
   * present a client certificate). Paths copied. */
  bool tls;
  const char *ca_file;
  const char *server_name;
  bool insecure;
  const char *cert_file, *key_file;
} tb_publisher_opts_t;

/* Connects, attaches the run (a new one, or opts->run) and starts the I/O
 * thread. Returns 0 and *out, or TB_CLIENT_EINVALID (a model summary or run
 * id too long), TB_CLIENT_ENOMEM, a tb_client_connect error (the daemon
 * unreachable, TLS refused, a bad token), or the daemon's refusal of attach
 * (TB_PROTO_E*: no_such_run for a run a daemon restarted without --resume
 * forgot, invalid_state for one that ended or that another connection
 * holds, forbidden for a token that does not grant the trainer role, such
 * as the observer token; overloaded past 16 runs per connection), with err
 * saying why (err may be NULL). On failure *out is NULL and nothing is left
 * running. */
int tb_publisher_new(const tb_publisher_opts_t *opts, tb_publisher_t **out, tb_client_err_t *err);

/* The callback to add to the loop's callback list. Its hooks publish every
 * event with its logs (and, at train_begin, the model's class names); it
 * saves the trainer's seq in checkpoints (state key "seq"). Valid until
 * tb_publisher_free. */
tb_callback_t *tb_publisher_callback(tb_publisher_t *p);

/* The run's id ("r3"). */
const char *tb_publisher_run(const tb_publisher_t *p);

/* Ends the run: every queued event goes out, then `finish` with state
 * (TB_RUN_FINISHED, or TB_RUN_FAILED with reason; the daemon makes it
 * stopped or cancelled when a stop or cancel was applied). Waits up to
 * timeout_ms (< 0: no limit) for the daemon's answer (reconnecting meanwhile
 * if it must). Returns 0, TB_CLIENT_ETIMEOUT, the daemon's refusal, or
 * the error that made the publisher give up earlier (TB_CLIENT_ECLOSED when
 * the daemon could not be reached for reconnect_ms; the daemon's refusal to
 * attach the run again). The I/O thread has stopped when it returns. */
int tb_publisher_finish(tb_publisher_t *p, tb_run_state_t state, const char *reason, int timeout_ms,
                        tb_client_err_t *err);

/* Stops the I/O thread (without finishing the run: it is then detached on
 * the daemon), restores the control block's notify function and frees.
 * NULL-safe. */
void tb_publisher_free(tb_publisher_t *p);

typedef struct tb_publisher_stats_s {
  int64_t events;     /* events numbered (the trainer's seq) */
  int64_t sent;       /* events sent (a resent one counts again) */
  int64_t dropped;    /* batch events dropped because the queue was full */
  int64_t rejected;   /* refusals from the daemon (rejected notices, error answers) */
  int64_t reconnects; /* connections made again */
  int64_t controls;   /* controls received */
} tb_publisher_stats_t;

void tb_publisher_stats(const tb_publisher_t *p, tb_publisher_stats_t *out);

#endif
