/* gw_buf.h -- growable byte buffer for building responses, metrics text and JSON
 *
 * A gw_buf_t owns its bytes; data is always NUL-terminated. Aborts on OOM like the gateway.
 */
#ifndef GW_BUF_H
#define GW_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
} gw_buf_t;

#define GW_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/**
 * Room for n more bytes at the end: returns b->data + b->len, valid until the next change of b.
 * Write there, then gw_buf_added(b, written) with written <= n.
 */
char *gw_buf_space(gw_buf_t *b, size_t n);

/** Count n bytes written into the room gw_buf_space() gave as part of b. */
void gw_buf_added(gw_buf_t *b, size_t n);

/** Append len bytes. */
void gw_buf_append(gw_buf_t *b, const void *p, size_t len);

/** Append a NUL-terminated string. */
void gw_buf_puts(gw_buf_t *b, const char *s);

/** Append v in decimal (what "%llu" prints, without printf's cost: checkpoint lines have many). */
void gw_buf_u64(gw_buf_t *b, uint64_t v);

/** Append printf-style formatted text. */
void gw_buf_printf(gw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Append s as a JSON string literal, quotes included, escaped per RFC 8259. */
void gw_buf_json_str(gw_buf_t *b, const char *s);

/** Forget the contents, keep the memory. */
void gw_buf_reset(gw_buf_t *b);

/** Release the memory; the buffer may be reused. */
void gw_buf_free(gw_buf_t *b);

/** Append the whole file at path to b; 0, or -1 with errno set (b keeps what was read). */
int gw_buf_read_file(gw_buf_t *b, const char *path);

#endif
