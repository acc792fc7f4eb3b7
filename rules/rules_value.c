/* rules_value.c -- Postgres text values -> SQLite values, as the PowerSync service converts them
 *
 * Input is the text form of a value under the session settings rules.h pins (UTC, ISO dates,
 * extra_float_digits=3, hex bytea). Output is an rval_t whose strings point either into the
 * caller's text (when no conversion is needed) or into a scratch buffer. Because the scratch
 * buffer may be reallocated while a row is converted, converted strings are recorded as offsets
 * (rval_t.s == NULL, rval_t.i == offset) and resolved by the caller with the final buffer.
 * Conversion table: rules/README.md "Value conversion" (spec §4.7).
 */
#include "rules_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* type OIDs we treat specially */
enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_OID = 26,
    OID_JSON = 114,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_NUMERIC = 1700,
    OID_DATE = 1082,
    OID_TIME = 1083,
    OID_TIMESTAMP = 1114,
    OID_TIMESTAMPTZ = 1184,
    OID_JSONB = 3802,
    OID_PG_LSN = 3220,
    OID_TEXT = 25,
};

/* array type -> element type */
static uint32_t array_elem(uint32_t oid)
{
    switch (oid) {
    case 1000:
        return OID_BOOL;
    case 1001:
        return OID_BYTEA;
    case 1005:
        return OID_INT2;
    case 1007:
        return OID_INT4;
    case 1016:
        return OID_INT8;
    case 1028:
        return OID_OID;
    case 199:
        return OID_JSON;
    case 3807:
        return OID_JSONB;
    case 1021:
        return OID_FLOAT4;
    case 1022:
        return OID_FLOAT8;
    case 1231:
        return OID_NUMERIC;
    case 1182:
        return OID_DATE;
    case 1183:
        return OID_TIME;
    case 1115:
        return OID_TIMESTAMP;
    case 1185:
        return OID_TIMESTAMPTZ;
    case 3221:
        return OID_PG_LSN;
    case 1009: /* text */
    case 1015: /* varchar */
    case 1014: /* bpchar */
    case 2951: /* uuid */
    case 1187: /* interval */
    case 1041: /* inet */
    case 651:  /* cidr */
    case 1040: /* macaddr */
    case 1270: /* timetz */
    case 1003: /* name */
    case 1002: /* char */
        return OID_TEXT;
    default:
        return 0;
    }
}

static void set_scratch(rval_t *out, int t, rbuf_t *scratch, size_t start)
{
    out->t = t;
    out->s = NULL; /* resolved by the caller: offset in i, length in n */
    out->i = (int64_t)start;
    out->n = scratch->n - start;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* days since 1970-01-01 of a proleptic Gregorian date */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = era * 400 + yoe + (*m <= 2);
}

typedef struct ts {
    int64_t year;
    int mon, day, hh, mm, ss;
    char frac[16]; /* digits after the dot, as printed */
    int has_tz;
    int tz_sec; /* offset east of UTC in seconds */
    int bc;
} ts_t;

static int parse_num(const char **p, const char *e, int maxd, int64_t *out)
{
    int n = 0;
    int64_t v = 0;
    while (*p < e && isdigit((unsigned char)**p) && n < maxd) {
        v = v * 10 + (**p - '0');
        (*p)++;
        n++;
    }
    *out = v;
    return n;
}

/* "YYYY-MM-DD[ HH:MM:SS[.f]][+HH[:MM[:SS]]][ BC]" */
static int parse_ts(const char *s, size_t len, int with_time, ts_t *t)
{
    const char *p = s, *e = s + len;
    int64_t v;
    memset(t, 0, sizeof *t);
    if (parse_num(&p, e, 9, &v) < 4 || p >= e || *p != '-') return -1;
    t->year = v;
    p++;
    if (parse_num(&p, e, 2, &v) != 2 || p >= e || *p != '-') return -1;
    t->mon = (int)v;
    p++;
    if (parse_num(&p, e, 2, &v) != 2) return -1;
    t->day = (int)v;
    if (with_time) {
        if (p >= e || (*p != ' ' && *p != 'T')) return -1;
        p++;
        if (parse_num(&p, e, 2, &v) != 2 || p >= e || *p != ':') return -1;
        t->hh = (int)v;
        p++;
        if (parse_num(&p, e, 2, &v) != 2 || p >= e || *p != ':') return -1;
        t->mm = (int)v;
        p++;
        if (parse_num(&p, e, 2, &v) != 2) return -1;
        t->ss = (int)v;
        if (p < e && *p == '.') {
            p++;
            int n = 0;
            while (p < e && isdigit((unsigned char)*p)) {
                if (n < 15) t->frac[n++] = *p;
                p++;
            }
        }
        if (p < e && (*p == '+' || *p == '-')) {
            int sign = *p == '-' ? -1 : 1;
            p++;
            int64_t h = 0, m = 0, sec = 0;
            if (parse_num(&p, e, 2, &h) != 2) return -1;
            if (p < e && *p == ':') {
                p++;
                parse_num(&p, e, 2, &m);
                if (p < e && *p == ':') {
                    p++;
                    parse_num(&p, e, 2, &sec);
                }
            }
            t->has_tz = 1;
            t->tz_sec = sign * (int)(h * 3600 + m * 60 + sec);
        }
    }
    if (e - p == 3 && memcmp(p, " BC", 3) == 0) {
        t->bc = 1;
        p = e;
    }
    return p == e ? 0 : -1;
}

static void put_frac(rbuf_t *b, const char *frac, int digits)
{
    if (digits <= 0) return;
    rb_putc(b, '.');
    size_t n = strlen(frac);
    for (int i = 0; i < digits; i++)
        rb_putc(b, (size_t)i < n ? frac[i] : '0');
}

/* Append the converted timestamp; returns 0, or -1 when the value becomes NULL. */
static int conv_timestamp(const rconv_t *cv, int tz, const char *s, size_t len, rbuf_t *b)
{
    if ((len == 8 && memcmp(s, "infinity", 8) == 0) ||
        (len == 9 && memcmp(s, "-infinity", 9) == 0)) {
        int neg = s[0] == '-';
        rb_puts(b, neg ? "0000-01-01" : "9999-12-31");
        rb_putc(b, cv->iso ? 'T' : ' ');
        rb_puts(b, neg ? "00:00:00" : "23:59:59");
        if (cv->iso) put_frac(b, "", cv->precision);
        if (tz) rb_putc(b, 'Z');
        return 0;
    }
    ts_t t;
    if (parse_ts(s, len, 1, &t) != 0) {
        rb_put(b, s, len); /* not understood: keep as printed */
        return 0;
    }
    if (tz) {
        if (t.has_tz && t.tz_sec != 0 && !t.bc) {
            int64_t days = days_from_civil(t.year, t.mon, t.day);
            int64_t secs = days * 86400 + t.hh * 3600 + t.mm * 60 + t.ss - t.tz_sec;
            int64_t d = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
            int64_t r = secs - d * 86400;
            civil_from_days(d, &t.year, &t.mon, &t.day);
            t.hh = (int)(r / 3600);
            t.mm = (int)(r / 60 % 60);
            t.ss = (int)(r % 60);
        }
        if (t.bc || t.year > 9999) return -1;
    } else if (!cv->iso) {
        rb_put(b, s, len);
        return 0;
    }
    if (t.year < 10000) {
        char f[19] = {(char)('0' + t.year / 1000),
                      (char)('0' + t.year / 100 % 10),
                      (char)('0' + t.year / 10 % 10),
                      (char)('0' + t.year % 10),
                      '-',
                      (char)('0' + t.mon / 10),
                      (char)('0' + t.mon % 10),
                      '-',
                      (char)('0' + t.day / 10),
                      (char)('0' + t.day % 10),
                      cv->iso ? 'T' : ' ',
                      (char)('0' + t.hh / 10),
                      (char)('0' + t.hh % 10),
                      ':',
                      (char)('0' + t.mm / 10),
                      (char)('0' + t.mm % 10),
                      ':',
                      (char)('0' + t.ss / 10),
                      (char)('0' + t.ss % 10)};
        rb_put(b, f, sizeof f);
    } else {
        rb_printf(b, "%lld-%02d-%02d%c%02d:%02d:%02d", (long long)t.year, t.mon, t.day,
                  cv->iso ? 'T' : ' ', t.hh, t.mm, t.ss);
    }
    if (cv->iso)
        put_frac(b, t.frac, cv->precision);
    else if (t.frac[0])
        put_frac(b, t.frac, (int)strlen(t.frac));
    if (tz) rb_putc(b, 'Z');
    if (!tz && t.bc) rb_puts(b, " BC");
    return 0;
}

static void conv_time(const rconv_t *cv, const char *s, size_t len, rbuf_t *b)
{
    if (!cv->iso || len < 8) {
        rb_put(b, s, len);
        return;
    }
    rb_put(b, s, 8);
    char frac[16] = {0};
    size_t i = 8, n = 0;
    if (i < len && s[i] == '.') {
        for (i++; i < len && isdigit((unsigned char)s[i]); i++)
            if (n < 15) frac[n++] = s[i];
    }
    put_frac(b, frac, cv->precision);
    rb_put(b, s + i, len - i);
}

static void conv_date(const char *s, size_t len, rbuf_t *b)
{
    if (len == 8 && memcmp(s, "infinity", 8) == 0)
        rb_puts(b, "9999-12-31");
    else if (len == 9 && memcmp(s, "-infinity", 9) == 0)
        rb_puts(b, "0000-01-01");
    else
        rb_put(b, s, len);
}

static void conv_lsn(const char *s, size_t len, rbuf_t *b)
{
    const char *slash = memchr(s, '/', len);
    if (!slash || slash - s > 8) {
        rb_put(b, s, len);
        return;
    }
    for (int i = 0; i < 8 - (int)(slash - s); i++)
        rb_putc(b, '0');
    rb_put(b, s, len);
}

static int64_t parse_int(const char *s, size_t len)
{
    char tmp[32];
    if (len >= sizeof tmp) len = sizeof tmp - 1;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    return strtoll(tmp, NULL, 10);
}

static double parse_double(const char *s, size_t len)
{
    char tmp[64];
    if (len >= sizeof tmp) len = sizeof tmp - 1;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    return strtod(tmp, NULL);
}

/* Append one array element (already unquoted) as JSON. */
static void array_elem_json(const rconv_t *cv, uint32_t elem, const char *s, size_t len,
                            int is_null, rbuf_t *b)
{
    if (is_null) {
        rb_puts(b, "null");
        return;
    }
    switch (elem) {
    case OID_BOOL:
        rb_puts(b, (len && s[0] == 't') ? "1" : "0");
        return;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        rb_int(b, parse_int(s, len));
        return;
    case OID_FLOAT4:
    case OID_FLOAT8:
        rj_double(b, parse_double(s, len), 1);
        return;
    case OID_JSON:
    case OID_JSONB:
        rb_put(b, s, len);
        return;
    case OID_BYTEA:
        rb_puts(b, "null");
        return;
    case OID_DATE:
    case OID_TIME:
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
    case OID_PG_LSN: {
        rbuf_t t = {0};
        int null = 0;
        if (elem == OID_DATE)
            conv_date(s, len, &t);
        else if (elem == OID_TIME)
            conv_time(cv, s, len, &t);
        else if (elem == OID_PG_LSN)
            conv_lsn(s, len, &t);
        else
            null = conv_timestamp(cv, elem == OID_TIMESTAMPTZ, s, len, &t) != 0;
        if (null)
            rb_puts(b, "null");
        else
            rj_string(b, t.p ? t.p : "", t.n);
        rb_free(&t);
        return;
    }
    default:
        rj_string(b, s, len);
        return;
    }
}

/* Parse Postgres array text at *p (pointing at '{') and append JSON; returns 0 or -1. */
static int conv_array(const rconv_t *cv, uint32_t elem, const char **p, const char *e, rbuf_t *b,
                      int depth)
{
    if (*p >= e || **p != '{' || depth > 32) return -1;
    (*p)++;
    rb_putc(b, '[');
    int first = 1;
    rbuf_t item = {0};
    int rc = 0;
    if (*p < e && **p == '}') {
        (*p)++;
        rb_putc(b, ']');
        return 0;
    }
    while (*p < e) {
        if (!first) rb_putc(b, ',');
        first = 0;
        if (**p == '{') {
            if (conv_array(cv, elem, p, e, b, depth + 1) != 0) {
                rc = -1;
                break;
            }
        } else {
            item.n = 0;
            int quoted = 0;
            if (**p == '"') {
                quoted = 1;
                (*p)++;
                while (*p < e && **p != '"') {
                    if (**p == '\\' && *p + 1 < e) (*p)++;
                    rb_putc(&item, **p);
                    (*p)++;
                }
                if (*p >= e) {
                    rc = -1;
                    break;
                }
                (*p)++;
            } else {
                while (*p < e && **p != ',' && **p != '}') {
                    rb_putc(&item, **p);
                    (*p)++;
                }
            }
            int is_null = !quoted && item.n == 4 && strncasecmp(item.p, "NULL", 4) == 0;
            array_elem_json(cv, elem, item.p ? item.p : "", item.n, is_null, b);
        }
        if (*p < e && **p == ',') {
            (*p)++;
            continue;
        }
        if (*p < e && **p == '}') {
            (*p)++;
            rb_putc(b, ']');
            rb_free(&item);
            return 0;
        }
        rc = -1;
        break;
    }
    rb_free(&item);
    return rc ? rc : -1;
}

void rv_from_pg(const rconv_t *cv, uint32_t oid, const char *s, size_t len, rval_t *out,
                rbuf_t *scratch)
{
    if (!s) {
        out->t = SQLITE_NULL;
        return;
    }
    size_t start = scratch->n;
    switch (oid) {
    case OID_BOOL:
        out->t = SQLITE_INTEGER;
        out->i = len > 0 && (s[0] == 't' || s[0] == 'T');
        return;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        out->t = SQLITE_INTEGER;
        out->i = parse_int(s, len);
        return;
    case OID_FLOAT4:
    case OID_FLOAT8:
        out->t = SQLITE_FLOAT;
        out->d = parse_double(s, len);
        return;
    case OID_BYTEA:
        if (len >= 2 && s[0] == '\\' && s[1] == 'x') {
            for (size_t i = 2; i + 1 < len; i += 2) {
                int hi = hexval(s[i]), lo = hexval(s[i + 1]);
                if (hi < 0 || lo < 0) break;
                rb_putc(scratch, (char)(hi << 4 | lo));
            }
            set_scratch(out, SQLITE_BLOB, scratch, start);
            return;
        }
        break;
    case OID_DATE:
        conv_date(s, len, scratch);
        set_scratch(out, SQLITE_TEXT, scratch, start);
        return;
    case OID_TIME:
        conv_time(cv, s, len, scratch);
        set_scratch(out, SQLITE_TEXT, scratch, start);
        return;
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
        if (conv_timestamp(cv, oid == OID_TIMESTAMPTZ, s, len, scratch) != 0) {
            scratch->n = start;
            out->t = SQLITE_NULL;
            return;
        }
        set_scratch(out, SQLITE_TEXT, scratch, start);
        return;
    case OID_PG_LSN:
        conv_lsn(s, len, scratch);
        set_scratch(out, SQLITE_TEXT, scratch, start);
        return;
    default: {
        uint32_t elem = array_elem(oid);
        if (elem) {
            const char *p = s, *e = s + len;
            /* optional dimension decoration "[1:2]={...}" */
            if (p < e && *p == '[') {
                const char *eq = memchr(p, '=', len);
                if (eq) p = eq + 1;
            }
            if (conv_array(cv, elem, &p, e, scratch, 0) == 0 && p == e) {
                set_scratch(out, SQLITE_TEXT, scratch, start);
                return;
            }
            scratch->n = start;
        }
        break;
    }
    }
    out->t = SQLITE_TEXT;
    out->s = s;
    out->n = len;
}
