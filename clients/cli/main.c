/* trainbus: the command-line client. Subcommands live in their own files;
 * this one dispatches and prints the overall help. */
#include "cli.h"

#include <string.h>

static void usage(FILE *f) {
  fprintf(f, "usage: trainbus <command> [options]\n"
             "\n"
             "commands:\n"
             "  train [JOB.json]   train a job in this process (the built-in demo without JOB)\n"
             "\n"
             "`trainbus <command> --help` documents each command.\n"
             "\n"
             "exit codes: 0 done, 1 refused or failed, 2 usage or bad job, 3 cannot connect\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return TB_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return TB_EXIT_OK;
  }
  if (strcmp(argv[1], "train") == 0)
    return tb_cli_train(argc - 1, argv + 1);
  fprintf(stderr, "trainbus: unknown command '%s' (see trainbus --help)\n", argv[1]);
  return TB_EXIT_USAGE;
}
