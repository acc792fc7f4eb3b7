/* auth_b64.c -- base64url (RFC 4648 section 5, no padding) for JWS segments and JWKS numbers
 *
 * Decoding is strict: only the URL-safe alphabet, no '=' padding, no whitespace, no length of
 * the form 4k+1, and the unused low bits of the last character must be zero, so every byte
 * string has exactly one accepted encoding (a token cannot be altered without changing its
 * signature input).
 */
#include "auth_int.h"

static const char enc_table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63, or 64 for a byte outside the alphabet */
static unsigned char dec_table[256];
static pthread_once_t dec_once = PTHREAD_ONCE_INIT;

static void dec_init(void)
{
    for (int i = 0; i < 256; i++)
        dec_table[i] = 64;
    for (int i = 0; i < 64; i++)
        dec_table[(unsigned char)enc_table[i]] = (unsigned char)i;
}

size_t auth__b64url_declen(size_t len)
{
    return len / 4 * 3 + 3;
}

long auth__b64url_decode(const char *in, size_t len, unsigned char *out)
{
    pthread_once(&dec_once, dec_init);
    if (len % 4 == 1) return -1;
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        unsigned a = dec_table[(unsigned char)in[i]], b = dec_table[(unsigned char)in[i + 1]],
                 c = dec_table[(unsigned char)in[i + 2]], d = dec_table[(unsigned char)in[i + 3]];
        if ((a | b | c | d) & 64) return -1;
        unsigned v = a << 18 | b << 12 | c << 6 | d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    size_t rest = len - i;
    if (rest == 2) {
        unsigned a = dec_table[(unsigned char)in[i]], b = dec_table[(unsigned char)in[i + 1]];
        if ((a | b) & 64 || (b & 0x0f) != 0) return -1;
        out[o++] = (unsigned char)(a << 2 | b >> 4);
    } else if (rest == 3) {
        unsigned a = dec_table[(unsigned char)in[i]], b = dec_table[(unsigned char)in[i + 1]],
                 c = dec_table[(unsigned char)in[i + 2]];
        if ((a | b | c) & 64 || (c & 0x03) != 0) return -1;
        out[o++] = (unsigned char)(a << 2 | b >> 4);
        out[o++] = (unsigned char)((b & 0x0f) << 4 | c >> 2);
    }
    return (long)o;
}

size_t auth__b64url_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = enc_table[v >> 18 & 63];
        out[o++] = enc_table[v >> 12 & 63];
        out[o++] = enc_table[v >> 6 & 63];
        out[o++] = enc_table[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = enc_table[v >> 18 & 63];
        out[o++] = enc_table[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = enc_table[v >> 18 & 63];
        out[o++] = enc_table[v >> 12 & 63];
        out[o++] = enc_table[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}
