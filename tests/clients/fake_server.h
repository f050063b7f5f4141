/* A scripted fake trainbus server for the client library's tests: it runs a
 * list of steps (send a line, expect a line containing some text, close,
 * accept the next connection) on its own thread, over TCP on 127.0.0.1 or a
 * Unix socket, and records the first step that did not go as scripted. */
#ifndef TB_FAKE_SERVER_H
#define TB_FAKE_SERVER_H

#include <pthread.h>
#include <stdbool.h>

typedef enum {
  FS_END = 0,
  FS_SEND,   /* send text plus '\n' */
  FS_RAW,    /* send text as is */
  FS_EXPECT, /* read a line; it must contain text (every '|'-separated part) */
  FS_CLOSE,  /* close the connection */
  FS_ACCEPT, /* accept the next connection */
  FS_SLEEP,  /* sleep ms milliseconds */
  FS_DRAIN,  /* read until the client closes */
} fs_op_t;

typedef struct fs_step_s {
  fs_op_t op;
  const char *text;
  int ms;
} fs_step_t;

typedef struct fake_server_s {
  int listen_fd, conn_fd;
  char addr[256]; /* what to give tb_client_opts_t.addr */
  char unix_path[108];
  const fs_step_t *steps;
  pthread_t thread;
  char failure[1200]; /* "" while everything went as scripted */
  char last_line[4096];
  int n_lines; /* lines read from the client */
} fake_server_t;

/* Starts listening (unix_socket: on a fresh path under /tmp) and runs steps
 * on a thread; the first connection is accepted before the first step. */
int fake_server_start(fake_server_t *fs, const fs_step_t *steps, bool unix_socket);
/* Waits for the script to end and closes everything. Returns fs->failure
 * ("" when the script ran as written). */
const char *fake_server_join(fake_server_t *fs);

#define HELLO                                                                                      \
  "{\"jsonrpc\":\"2.0\",\"method\":\"hello\",\"params\":{\"protocol\":1,\"server\":"               \
  "\"fake/0\",\"auth_required\":true,\"auth_timeout_ms\":5000,\"max_line\":65536}}"

#endif
