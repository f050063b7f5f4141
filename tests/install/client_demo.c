/* A program of a trainbus user, built against the INSTALLED client library
 * (with pkg-config, and with find_package(trainbus)): it connects to a
 * daemon as an observer, checks the daemon is the version the installed
 * headers say, follows run r1 from its first event, and prints how many
 * epochs it saw end before the run finished.
 *
 *   client_demo HOST:PORT   exit 0 when r1 finished and every epoch was seen */
#include <trainbus/client.h>
#include <trainbus/version.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: client_demo HOST:PORT\n");
    return 2;
  }
  tb_client_opts_t o = {.addr = argv[1], .role = TB_ROLE_OBSERVER, .name = "client_demo"};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  if (tb_client_connect(&o, &c, &err) != 0) {
    fprintf(stderr, "client_demo: %s\n", err.msg);
    return 1;
  }
  if (strcmp(tb_client_hello(c)->server, TB_SERVER_SOFTWARE) != 0) {
    fprintf(stderr, "client_demo: the daemon is %s, the headers are %s\n",
            tb_client_hello(c)->server, TB_SERVER_SOFTWARE);
    return 1;
  }
  const char *runs[] = {"r1"}, *events[] = {"epoch_end", "state"};
  tb_client_sub_opts_t so = {.runs = runs,
                             .n_runs = 1,
                             .events = events,
                             .n_events = 2,
                             .has_since_seq = true,
                             .since_seq = 1};
  if (tb_client_subscribe(c, &so, NULL, NULL, &err) != 0) {
    fprintf(stderr, "client_demo: %s\n", err.msg);
    return 1;
  }
  static tb_smsg_t m;
  int epochs = 0, rc = 1;
  for (;;) {
    if (tb_client_next(c, 60000, &m, &err) != 0) {
      fprintf(stderr, "client_demo: %s\n", err.msg);
      break;
    }
    bool done = false;
    if (m.kind == TB_SMSG_EVENT && strcmp(m.event.name, "epoch_end") == 0) {
      epochs++;
    } else if (m.kind == TB_SMSG_EVENT && strcmp(m.event.name, "state") == 0 &&
               m.event.state != NULL && strcmp(m.event.state, "running") != 0) {
      printf("r1 %s after %d epochs (%s, client library %s)\n", m.event.state, epochs,
             tb_client_hello(c)->server, TB_VERSION);
      rc = strcmp(m.event.state, "finished") == 0 ? 0 : 1;
      done = true;
    }
    tb_smsg_free(&m);
    if (done)
      break;
  }
  tb_client_free(c);
  return rc;
}
