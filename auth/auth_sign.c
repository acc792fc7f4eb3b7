/* auth_sign.c -- sign development tokens with a configured HMAC key (`ferry token`)
 *
 * Only HMAC keys can sign: the gateway holds no private keys. The token is encoded by libjwt
 * (header "alg", "typ":"JWT" and "kid" when the key has one; payload the caller's claims).
 */
#include "auth_int.h"

#include <jwt.h>
#include <stdlib.h>
#include <string.h>

int auth_sign_hmac(auth_ctx_t *ctx, const char *kid, const json_t *claims, char **out,
                   auth_err_t *err)
{
    *out = NULL;
    const auth_key_t *key = NULL;
    for (size_t i = 0; i < ctx->n_static && key == NULL; i++) {
        const auth_key_t *k = &ctx->static_keys[i];
        if (k->kty == AUTH_KTY_OCT && (kid == NULL || (k->kid && strcmp(k->kid, kid) == 0)))
            key = k;
    }
    if (key == NULL) {
        if (kid != NULL)
            return auth__fail(err, AUTH_EINVAL, "no HMAC key with kid \"%s\" is configured", kid);
        auth__fail(err, AUTH_EINVAL, "no HMAC key is configured");
        auth__detail(err, "Development tokens are signed with an auth.keys entry that has alg "
                          "HS256, HS384 or HS512 and a secret.");
        return AUTH_EINVAL;
    }
    if (!json_is_object(claims))
        return auth__fail(err, AUTH_EINVAL, "claims must be a JSON object");
    int alg = __builtin_ctz(key->algs);
    char *payload = json_dumps(claims, JSON_COMPACT);
    jwt_t *jwt = NULL;
    int rc = AUTH_ENOMEM;
    if (payload == NULL || jwt_new(&jwt) != 0) goto out;
    rc = AUTH_EINVAL;
    if (jwt_add_grants_json(jwt, payload) != 0 ||
        (key->kid != NULL && jwt_add_header(jwt, "kid", key->kid) != 0) ||
        jwt_set_alg(jwt, (jwt_alg_t)(alg + 1), key->secret, (int)key->secret_len) != 0)
        goto out;
    char *tok = jwt_encode_str(jwt);
    if (tok == NULL) goto out;
    *out = tok; /* malloc'd by libjwt 1.10 */
    rc = 0;
out:
    jwt_free(jwt);
    free(payload);
    if (rc == AUTH_ENOMEM) return auth__fail(err, rc, "out of memory");
    if (rc != 0) return auth__fail(err, rc, "could not encode the token");
    return 0;
}
