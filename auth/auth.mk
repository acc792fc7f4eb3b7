# auth/auth.mk -- sources of libauth.a (JWT/JWKS verification; a leaf library)
AUTH_SRCS += \
	auth/auth_err.c \
	auth/auth_b64.c \
	auth/auth_keys.c \
	auth/auth_jwks.c \
	auth/auth_sig.c \
	auth/auth_verify.c \
	auth/auth_cache.c \
	auth/auth_ctx.c \
	auth/auth_sign.c

UNIT_TESTS += auth
FUZZ_TARGETS += auth
