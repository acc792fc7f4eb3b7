/* gw_cli_int.h -- what the subcommands share (cli/ only; main.c sees gw_cli.h alone) */
#ifndef GW_CLI_INT_H
#define GW_CLI_INT_H

#include "config/gw_config.h"
#include "storage/gw_storage.h"

/**
 * The storage options of cfg (storage.kind and the keys of that kind), publishing to pub (NULL
 * for a process that only reads). The strings stay cfg's: cfg must outlive the options.
 */
gw_storage_opts_t gw_cli_storage_opts(const gw_config_t *cfg, gw_storage_pub_t *pub);

#endif
