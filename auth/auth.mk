# auth/auth.mk -- sources of libauth.a (JWT/JWKS verification; a leaf library)
AUTH_SRCS +=
