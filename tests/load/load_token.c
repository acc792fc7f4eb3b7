/* load_token.c -- HS256 tokens for the load harness's simulated users
 *
 * See load_token.h. Base64url without padding, header {"alg":"HS256","typ":"JWT"[,"kid"]}.
 * Nothing is allocated: the caller's buffer receives the token.
 */
#include "load_token.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
    }
    return o;
}

int load_token_sign(const load_token_cfg_t *cfg, const char *sub, char *out, size_t cap)
{
    char head[256], body[512];
    int hl = cfg->kid ? snprintf(head, sizeof head,
                                 "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", cfg->kid)
                      : snprintf(head, sizeof head, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
    long now = (long)time(NULL);
    int bl = snprintf(body, sizeof body, "{\"sub\":\"%s\",\"iat\":%ld,\"exp\":%ld%s%s%s%s%s%s}",
                      sub, now, now + cfg->ttl, cfg->aud ? ",\"aud\":\"" : "",
                      cfg->aud ? cfg->aud : "", cfg->aud ? "\"" : "", cfg->iss ? ",\"iss\":\"" : "",
                      cfg->iss ? cfg->iss : "", cfg->iss ? "\"" : "");
    if (hl < 0 || bl < 0 || (size_t)hl >= sizeof head || (size_t)bl >= sizeof body) return -1;
    size_t need = ((size_t)hl + 2) / 3 * 4 + ((size_t)bl + 2) / 3 * 4 + 48;
    if (cap < need) return -1;
    size_t o = b64url((const unsigned char *)head, (size_t)hl, out);
    out[o++] = '.';
    o += b64url((const unsigned char *)body, (size_t)bl, out + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (HMAC(EVP_sha256(), cfg->secret, (int)strlen(cfg->secret), (const unsigned char *)out, o,
             mac, &maclen) == NULL)
        return -1;
    out[o++] = '.';
    o += b64url(mac, maclen, out + o);
    out[o] = '\0';
    return (int)o;
}
