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

# Benchmark (make bench runs tests/load/bench_auth.sh): links libauth.a only, it is a leaf.
PROGRAMS += $(BUILD)/bench_auth
$(BUILD)/bench_auth: $(OBJ)/tests/load/bench_auth.o $(BUILD)/libauth.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libauth.a $(LIBS)
