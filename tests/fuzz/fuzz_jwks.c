/* fuzz_jwks.c -- libFuzzer target: JWKS documents (auth__jwks_parse) and the keys they give
 *
 * fuzz_auth reaches the JWKS parser only incidentally. Here every input is a JWKS document
 * (with a dictionary of its member names and values, fuzz_jwks.dict, and seeds holding RSA, EC
 * and OKP keys), parsed with and without a restriction of algorithms (the config entry's alg);
 * every key it gives is then checked (it admits an algorithm, and only those allowed) and, for
 * one input in eight (chosen by its last byte, so a crash replays), used once: a signature
 * verified over the document's own bytes, as auth_verify would use it (public-key operations
 * are slow; verifying every time made this target ten times slower). Any result is fine except
 * a crash, a leak, a hang, or a key that admits no algorithm.
 */
#include "auth/auth.h"
#include "auth/auth_int.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void use_keys(auth_key_t *keys, size_t n, const uint8_t *data, size_t size)
{
    int verify = size > 0 && data[size - 1] % 8 == 0;
    for (size_t i = 0; i < n; i++) {
        if (keys[i].algs == 0) __builtin_trap();
        for (int alg = 0; verify && alg < AUTH_ALG_COUNT; alg++) {
            if ((keys[i].algs & AUTH_ALG_BIT(alg)) == 0) continue;
            auth_err_t err;
            size_t half = size / 2;
            /* the first half is the "signing input", the second the "signature" */
            (void)auth__verify_sig(&keys[i], alg, "", 0, (const char *)data, half, data + half,
                                   size - half, &err);
            break; /* one algorithm per key keeps each input cheap */
        }
        auth__key_clear(&keys[i]);
    }
    free(keys);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    auth_key_t *keys = NULL;
    size_t n = 0;
    auth_err_t err;
    if (auth__jwks_parse((const char *)data, size, 0, &keys, &n, &err) == 0)
        use_keys(keys, n, data, size);
    else if (keys != NULL || n != 0)
        __builtin_trap();
    /* a config entry { jwks_file: …, alg: X } restricts the keys to X (only worth a second
     * parse when the first gave keys) */
    if (n == 0) return 0;
    unsigned restrict_algs = size > 0 ? AUTH_ALG_BIT(data[0] % AUTH_ALG_COUNT) : 1;
    keys = NULL;
    n = 0;
    if (auth__jwks_parse((const char *)data, size, restrict_algs, &keys, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            if ((keys[i].algs & ~restrict_algs) != 0) __builtin_trap();
        use_keys(keys, n, data, size);
    }
    return 0;
}
