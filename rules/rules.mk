# rules/rules.mk -- sources of librules.a (sync rules and write rules; a leaf library)
#
# librules uses libyaml, SQLite, jansson and libcrypto (op checksums); the top-level PKGS
# already carries them. Also builds the unit test, the fuzz target and the row benchmark.
RULES_SRCS += \
	rules/rules_util.c \
	rules/rules_value.c \
	rules/rules_sql.c \
	rules/rules_compile.c \
	rules/rules_eval.c \
	rules/rules_func.c \
	rules/rules_write.c \
	rules/rules_lint.c \
	rules/rules_stream_parse.c \
	rules/rules_stream_compile.c \
	rules/rules_stream_alpha.c \
	rules/rules_stream_eval.c \
	rules/rules_stream_explain.c

UNIT_TESTS += rules
FUZZ_TARGETS += rules

PROGRAMS += $(BUILD)/bench_rules
$(BUILD)/bench_rules: $(OBJ)/tests/load/bench_rules.o $(BUILD)/librules.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/librules.a $(LIBS)
