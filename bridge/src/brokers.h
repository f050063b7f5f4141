/* Private: what nats.c and mqtt.c share with follow.c (the subscriber side
 * connects the same way the bridge does). Only these three files include the
 * broker libraries' headers. */
#ifndef TB_BRIDGE_BROKERS_H
#define TB_BRIDGE_BROKERS_H

#include "internal.h"

#include <mosquitto.h>
#include <nats/nats.h>

/* Options for a connection to o: URL, name, timeouts, reconnects, login,
 * TLS. 0 and *out (natsOptions_Destroy it), or an error. */
int tb__nats_options(const tb_broker_opts_t *o, const char *default_name, natsOptions **out,
                     tb_client_err_t *err);
/* A failed connect as a code: TB__EAGAIN (try again), TB_BRIDGE_EBROKER_AUTH
 * or TB_BRIDGE_EBROKER. */
int tb__nats_connect_code(natsStatus s);

/* A one-shot event a broker library's thread signals and another waits for
 * (a subscription's last callback returned; a connection's closed callback
 * ran): after it, the library calls nothing of ours, and what its callbacks
 * use may be freed. */
typedef struct tb__once_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} tb__once_t;

void tb__once_init(tb__once_t *o);
/* The callback: marks it done. closure is the tb__once_t. */
void tb__once_signal(void *closure);
/* Waits up to timeout_ms; true if it happened. Then destroys o. */
bool tb__once_wait(tb__once_t *o, int timeout_ms);

/* Splits mqtt[s]://[user[:password]@]host[:port]. */
int tb__mqtt_url(const char *url, char *host, size_t host_len, int *port, char *user,
                 size_t user_len, char *pass, size_t pass_len, bool *tls, tb_client_err_t *err);
/* A new MQTT 5 client for o, with login and TLS set, not connected yet. */
int tb__mqtt_client(const tb_broker_opts_t *o, const char *client_id, void *obj,
                    struct mosquitto **out, char *host, size_t host_len, int *port,
                    tb_client_err_t *err);

#endif
