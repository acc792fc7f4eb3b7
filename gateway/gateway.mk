# gateway/gateway.mk -- sources of the ferry daemon and CLI (libgw.a + main), folder by folder
#
# The folders and what each may include are in gateway/README.md; `make lint` checks the
# includes. Every folder lists its own sources here.
GW_BASE_SRCS := \
	gateway/base/gw_err.c \
	gateway/base/gw_version.c \
	gateway/base/gw_log.c \
	gateway/base/gw_arena.c \
	gateway/base/gw_buf.c \
	gateway/base/gw_map.c \
	gateway/base/gw_metrics.c

GW_CONFIG_SRCS := \
	gateway/config/gw_config.c \
	gateway/config/gw_rules.c

GW_PG_SRCS := \
	gateway/pg/gw_pg.c \
	gateway/pg/gw_lsn.c \
	gateway/pg/gw_pgoutput.c

GW_STORAGE_SRCS := \
	gateway/storage/gw_storage.c \
	gateway/storage/gw_oprec.c \
	gateway/storage/gw_publish.c \
	gateway/storage/gw_writer.c \
	gateway/storage/gw_compact.c \
	gateway/storage/sqlite/gw_sqlite.c \
	gateway/storage/sqlite/gw_sqlite_txn.c \
	gateway/storage/sqlite/gw_sqlite_rows.c \
	gateway/storage/sqlite/gw_sqlite_versions.c \
	gateway/storage/sqlite/gw_sqlite_sync.c \
	gateway/storage/sqlite/gw_sqlite_read.c \
	gateway/storage/postgres/gw_pgs.c \
	gateway/storage/postgres/gw_pgs_txn.c \
	gateway/storage/postgres/gw_pgs_versions.c \
	gateway/storage/postgres/gw_pgs_notify.c \
	gateway/storage/postgres/gw_pgs_read.c \
	gateway/storage/postgres/gw_pgs_wire.c

GW_REPL_SRCS := \
	gateway/repl/gw_repl.c \
	gateway/repl/gw_repl_source.c \
	gateway/repl/gw_repl_snapshot.c \
	gateway/repl/gw_repl_apply.c \
	gateway/repl/gw_repl_stream.c \
	gateway/repl/gw_repl_versions.c \
	gateway/repl/gw_repl_lead.c \
	gateway/repl/gw_repl_diag.c

GW_HTTP_SRCS := \
	gateway/http/gw_http.c \
	gateway/http/gw_worker.c \
	gateway/http/gw_auth.c \
	gateway/http/gw_compress.c

GW_API_SRCS := \
	gateway/api/gw_probes.c \
	gateway/api/gw_stream.c \
	gateway/api/gw_stream_cache.c \
	gateway/api/gw_stream_subs.c \
	gateway/api/gw_wcp.c \
	gateway/api/gw_write.c \
	gateway/api/gw_write_stmt.c \
	gateway/api/gw_write_batch.c \
	gateway/api/gw_write_janitor.c \
	gateway/api/gw_admin.c

GATEWAY_SRCS += $(GW_BASE_SRCS) $(GW_CONFIG_SRCS) $(GW_PG_SRCS) $(GW_STORAGE_SRCS) \
                $(GW_REPL_SRCS) $(GW_HTTP_SRCS) $(GW_API_SRCS)

# The CLI: `ferry serve` and the other subcommands (linked into build/ferry with main.c).
CLI_SRCS += \
	gateway/cli/gw_serve.c \
	gateway/cli/gw_cli_rules.c \
	gateway/cli/gw_cli_token.c \
	gateway/cli/gw_cli_debug.c \
	gateway/cli/gw_cli_compact.c

UNIT_TESTS += base/base config/config http/compress storage/storage_contract storage/storage_sqlite storage/storage_postgres storage/oprec pg/pgoutput
FUZZ_TARGETS += config pgoutput
