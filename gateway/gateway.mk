# gateway/gateway.mk -- sources of the ferry daemon and CLI (libgw.a + main)
GATEWAY_SRCS += \
	gateway/gw_err.c \
	gateway/gw_version.c \
	gateway/gw_log.c \
	gateway/gw_arena.c \
	gateway/gw_buf.c \
	gateway/gw_config.c \
	gateway/gw_metrics.c \
	gateway/gw_http.c \
	gateway/gw_serve.c \
	gateway/gw_pg.c \
	gateway/gw_pgoutput.c \
	gateway/gw_map.c \
	gateway/gw_storage.c \
	gateway/gw_repl.c \
	gateway/gw_worker.c \
	gateway/gw_wcp.c \
	gateway/gw_stream.c \
	gateway/gw_write.c \
	gateway/gw_admin.c

# Subcommands that belong to other issues live in their own files (see gateway/README.md).
CLI_SRCS += \
	gateway/gw_cli_rules.c \
	gateway/gw_cli_token.c \
	gateway/gw_cli_debug.c

UNIT_TESTS += gateway storage
FUZZ_TARGETS += config pgoutput

# Gateway glue for the leaf libraries, added by the rules and auth work when it exists.
GATEWAY_SRCS += gateway/gw_rules.c $(wildcard gateway/gw_auth.c)
