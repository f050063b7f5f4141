/* trainbusd --bridge: starting and keeping trainbus-bridge running beside the
 * daemon (supervise.c). Loop thread only. */
#ifndef TB_SUPERVISE_H
#define TB_SUPERVISE_H

#include "internal.h"

typedef struct tb__supervise_s {
  tb_server_t *s;
  uv_loop_t *loop;
  uv_process_t proc;
  uv_timer_t timer; /* the restart back-off, then the SIGKILL deadline */
  char **argv;      /* the bridge's path, its arguments, the broker URL */
  int argc;
  char **env, *env_addr, *env_token, *env_obs;
  int backoff_ms;
  uint64_t started_ms;
  bool active, running, stopping, stopping_done;
} tb__supervise_t;

/* Starts trainbus-bridge ARGS... URL for server s (its first listener's
 * address, its control and observer tokens go in the bridge's
 * environment). 0 or a UV_E* code. */
int tb__supervise_start(tb__supervise_t *sv, tb_server_t *s, const char *url,
                        const char *const *args, int n_args);
/* SIGTERM to the bridge, no more restarts; its handles close once it has
 * exited (SIGKILL after 5 s), so the loop ends after it. */
void tb__supervise_stop(tb__supervise_t *sv);
/* Frees what start allocated, after the loop has ended. */
void tb__supervise_free(tb__supervise_t *sv);

#endif
