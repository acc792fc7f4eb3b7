/* gw_pgoutput.h -- a pure decoder for the replication stream: CopyData framing and pgoutput v1
 *
 * Two layers, both without I/O or global state, so they can be fuzzed:
 *   gw_pgo_frame()  one CopyData message of START_REPLICATION: 'w' XLogData (positions and one
 *                   pgoutput message) or 'k' primary keepalive
 *   gw_pgo_decode() one pgoutput message (protocol version 1): Begin, Commit, Origin, Relation,
 *                   Type, Insert, Update, Delete, Truncate, Message
 * Decoded strings and values point into the input buffer (zero copy; valid while it lives);
 * arrays are allocated from the caller's arena. Everything is big-endian on the wire. Malformed
 * input is GW_EINVAL with a message naming the message type and the offset, never a crash.
 */
#ifndef GW_PGOUTPUT_H
#define GW_PGOUTPUT_H

#include "base/gw_arena.h"
#include "base/gw_err.h"

#include <stddef.h>
#include <stdint.h>

/* ---- CopyData framing ---- */

typedef enum gw_pgo_frame_kind {
    GW_PGO_XLOGDATA = 'w',
    GW_PGO_KEEPALIVE = 'k',
} gw_pgo_frame_kind_t;

typedef struct gw_pgo_frame {
    gw_pgo_frame_kind_t kind;
    uint64_t wal_start;  /* XLogData: start of the data (0 for Relation messages) */
    uint64_t wal_end;    /* XLogData: current end of WAL on the server; keepalive: same */
    int64_t send_time;   /* µs since 2000-01-01 UTC */
    int reply_requested; /* keepalive: the server wants a status update now */
    const char *payload; /* XLogData: the pgoutput message */
    size_t payload_len;
} gw_pgo_frame_t;

/** Split one CopyData message into *out; 0 or GW_EINVAL (err says why). */
int gw_pgo_frame(const char *buf, size_t len, gw_pgo_frame_t *out, gw_err_t *err);

/** Write a 34-byte standby status update ('r') into out; returns 34. */
size_t gw_pgo_status_update(char out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                            int64_t now_pg_us, int reply_now);

/** Microseconds since 2000-01-01 UTC (the replication protocol's clock) for now. */
int64_t gw_pgo_now(void);

/* ---- pgoutput messages ---- */

typedef enum gw_pgo_kind {
    GW_PGO_BEGIN = 'B',
    GW_PGO_COMMIT = 'C',
    GW_PGO_ORIGIN = 'O',
    GW_PGO_RELATION = 'R',
    GW_PGO_TYPE = 'Y',
    GW_PGO_INSERT = 'I',
    GW_PGO_UPDATE = 'U',
    GW_PGO_DELETE = 'D',
    GW_PGO_TRUNCATE = 'T',
    GW_PGO_MESSAGE = 'M',
} gw_pgo_kind_t;

/** One column value of a tuple. kind: 'n' NULL, 'u' unchanged TOAST, 't' text, 'b' binary. */
typedef struct gw_pgo_value {
    char kind;
    const char *data; /* not NUL-terminated; NULL for 'n'/'u' */
    uint32_t len;
} gw_pgo_value_t;

typedef struct gw_pgo_tuple {
    uint16_t ncols;
    gw_pgo_value_t *cols;
} gw_pgo_tuple_t;

typedef struct gw_pgo_column {
    uint8_t flags; /* 1: part of the replica identity key */
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
} gw_pgo_column_t;

typedef struct gw_pgo_msg {
    gw_pgo_kind_t kind;
    union {
        struct {
            uint64_t final_lsn;
            int64_t commit_time;
            uint32_t xid;
        } begin;
        struct {
            uint8_t flags;
            uint64_t commit_lsn;
            uint64_t end_lsn;
            int64_t commit_time;
        } commit;
        struct {
            uint64_t lsn;
            const char *name;
        } origin;
        struct {
            uint32_t relid;
            const char *nspname;
            const char *relname;
            char replident; /* 'd' default, 'n' nothing, 'f' full, 'i' index */
            uint16_t ncols;
            gw_pgo_column_t *cols;
        } relation;
        struct {
            uint32_t oid;
            const char *nspname;
            const char *typname;
        } type;
        struct {
            uint32_t relid;
            gw_pgo_tuple_t newtup;
        } insert;
        struct {
            uint32_t relid;
            char oldkind; /* 0: no old tuple, 'K': key columns only, 'O': full old row */
            gw_pgo_tuple_t oldtup;
            gw_pgo_tuple_t newtup;
        } update;
        struct {
            uint32_t relid;
            char oldkind; /* 'K' or 'O' */
            gw_pgo_tuple_t oldtup;
        } del;
        struct {
            uint32_t nrels;
            uint8_t options; /* 1: CASCADE, 2: RESTART IDENTITY */
            uint32_t *relids;
        } truncate;
        struct {
            uint8_t flags; /* 1: transactional */
            uint64_t lsn;
            const char *prefix;
            const char *content; /* not NUL-terminated */
            uint32_t len;
        } message;
    } u;
} gw_pgo_msg_t;

/** Decode one pgoutput v1 message; arrays come from arena. 0 or GW_EINVAL (err says why). */
int gw_pgo_decode(const char *buf, size_t len, gw_arena_t *arena, gw_pgo_msg_t *out, gw_err_t *err);

#endif
