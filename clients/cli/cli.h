/* The trainbus command line: shared declarations of the subcommands. */
#ifndef TB_CLI_H
#define TB_CLI_H

#include <stdio.h>

/* Exit codes, documented in `trainbus --help` and docs/CLI.md. */
enum {
  TB_EXIT_OK = 0,      /* done */
  TB_EXIT_FAILED = 1,  /* refused by the daemon, or the run failed */
  TB_EXIT_USAGE = 2,   /* bad arguments or a bad job file */
  TB_EXIT_CONNECT = 3, /* cannot connect */
};

int tb_cli_train(int argc, char **argv);

#endif
