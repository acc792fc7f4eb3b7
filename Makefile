# Makefile -- build, test, demo and benchmark Ferry (plain GNU make)
#
# Each module lists its own sources in a fragment included below (gateway/gateway.mk,
# rules/rules.mk, auth/auth.mk, tests/tests.mk), so parallel work touches different files.
# Outputs go to build/ (git-ignored): build/ferry is the daemon and CLI.
#
#   make                  build the daemon and every program (the default goal is `all`)
#   make check            install what is missing, build, lint, run every test
#   make demo             install what is missing, build, start a throwaway Postgres and ferry
#   make demo-stop        stop exactly what the demo started
#   make deps             install the Debian packages (idempotent)
#   make bench            run the benchmarks under tests/load/
#   make fuzz             run each libFuzzer target for FUZZ_SECONDS (default 30), or for
#                         FUZZ_RUNS executions when set; prints each one's executions
#   make chaos            the reliability campaign (tests/chaos/run.sh): about an hour
#   make lint             the include boundaries between folders (gateway/README.md)
#   make format           clang-format every C file; `make format-check` fails on one unformatted
#   SANITIZE=address,undefined   build (and test) with those sanitizers

.DEFAULT_GOAL := all

SANITIZE ?=
# Sanitizer builds live beside the plain one, so switching does not rebuild everything.
ifeq ($(SANITIZE),)
BUILD    := build
else
BUILD    := build/san
endif
OBJ      := $(BUILD)/obj
OPT      ?= -O2
FUZZ_SECONDS ?= 30
FUZZ_RUNS ?=

# Flags by module: the gateway sees every package; the leaf libraries (rules/, auth/,
# clientsdk/) compile with their own packages' flags only (make lint checks their includes).
pkg_cflags = $(shell pkg-config --cflags $(1) 2>/dev/null)
PKGS := libh2o-evloop libpq yaml-0.1 libjwt jansson sqlite3 libcurl openssl libzstd zlib
RULES_PKGS := yaml-0.1 sqlite3 jansson openssl
AUTH_PKGS  := libjwt openssl jansson libcurl
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(call pkg_cflags,check)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

# CFLAGS: what every object gets; OBJ_CFLAGS: a module's include and package flags (the
# gateway's by default; the leaves set their own below).
CFLAGS  := -std=gnu11 -Wall -Wextra -Werror $(OPT) -g -D_GNU_SOURCE -I. $(EXTRA_CFLAGS)
GATEWAY_CFLAGS := -DH2O_USE_LIBUV=0 -Igateway $(call pkg_cflags,$(PKGS)) $(CHECK_CFLAGS)
RULES_CFLAGS   := $(call pkg_cflags,$(RULES_PKGS))
AUTH_CFLAGS    := $(call pkg_cflags,$(AUTH_PKGS))
OBJ_CFLAGS = $(GATEWAY_CFLAGS)
LDFLAGS := $(EXTRA_LDFLAGS)
LIBS    := $(PKG_LIBS) -lpthread -lm
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

FERRY_VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
GIT_REV := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

# Filled by the module fragments.
GATEWAY_SRCS :=
RULES_SRCS   :=
AUTH_SRCS    :=
CLI_SRCS     :=
UNIT_TESTS   :=
FUZZ_TARGETS :=
PROGRAMS     :=

include gateway/gateway.mk
include rules/rules.mk
include auth/auth.mk
include tests/tests.mk
# The client SDK and the load harness bring their own fragments (optional until they exist).
-include clientsdk/clientsdk.mk
-include tests/load/load.mk

.PHONY: all check check-build demo demo-stop deps deps-if-missing bench chaos fuzz format \
        format-check lint clean

all: $(BUILD)/ferry $(PROGRAMS)

# Programs under build/ are built as $(BUILD)/... so they follow SANITIZE too.

# Rebuild everything when the flags change (e.g. SANITIZE on/off).
FLAGS_STAMP := $(BUILD)/.flags
# (plain variables only: a target-specific OBJ_CFLAGS would leak into this shared prerequisite)
STAMP_TEXT = $(CC) $(CFLAGS) $(GATEWAY_CFLAGS) $(RULES_CFLAGS) $(AUTH_CFLAGS) $(LDFLAGS)
$(FLAGS_STAMP): FORCE
	@mkdir -p $(BUILD)
	@echo '$(STAMP_TEXT)' | cmp -s - $@ || echo '$(STAMP_TEXT)' > $@
FORCE:

# Only gw_version.c sees the version and revision, and it is compiled on every build.
$(OBJ)/gateway/base/gw_version.o: gateway/base/gw_version.c FORCE
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) $(OBJ_CFLAGS) -DFERRY_VERSION='"$(FERRY_VERSION)"' \
	  -DFERRY_GIT_REV='"$(GIT_REV)"' -c $< -o $@

$(OBJ)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(OBJ_CFLAGS) -MMD -MP -c $< -o $@

lib_objs = $(patsubst %.c,$(OBJ)/%.o,$(1))

$(BUILD)/libgw.a: $(call lib_objs,$(GATEWAY_SRCS))
$(BUILD)/librules.a: $(call lib_objs,$(RULES_SRCS))
$(BUILD)/libauth.a: $(call lib_objs,$(AUTH_SRCS))
$(call lib_objs,$(RULES_SRCS)): OBJ_CFLAGS = $(RULES_CFLAGS)
$(call lib_objs,$(AUTH_SRCS)): OBJ_CFLAGS = $(AUTH_CFLAGS)
$(call lib_objs,$(SDK_SRCS)): OBJ_CFLAGS = $(call pkg_cflags,$(SDK_PKGS))
$(BUILD)/libgw.a $(BUILD)/librules.a $(BUILD)/libauth.a: $(OBJ)/empty.o
	@mkdir -p $(BUILD)
	rm -f $@
	ar rcs $@ $(filter %.o,$^)

$(OBJ)/empty.o: $(FLAGS_STAMP)
	@mkdir -p $(OBJ)
	echo 'typedef int ferry_empty_unit;' | $(CC) $(CFLAGS) -x c -c - -o $@

SERVER_LIBS := $(BUILD)/libgw.a $(BUILD)/librules.a $(BUILD)/libauth.a

$(BUILD)/ferry: $(call lib_objs,gateway/main.c $(CLI_SRCS)) $(SERVER_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(SERVER_LIBS) $(LIBS)

# Unit tests: tests/unit/test_NAME.c or tests/unit/FOLDER/test_NAME.c -> build/test_NAME,
# linked with every server library (UNIT_TESTS lists NAME or FOLDER/NAME).
unit_src = tests/unit/$(patsubst ./,,$(dir $(1)))test_$(notdir $(1)).c
UNIT_BINS := $(foreach t,$(UNIT_TESTS),$(BUILD)/test_$(notdir $(t)))
define unit_rule
$(BUILD)/test_$(notdir $(1)): $(call lib_objs,$(call unit_src,$(1))) $$(SERVER_LIBS)
	$$(CC) $$(LDFLAGS) -o $$@ $$< $$(SERVER_LIBS) $$(CHECK_LIBS) $$(LIBS)
endef
# (the SDK's test links libferry only: clientsdk.mk has its rule)
$(foreach t,$(filter-out sdk,$(UNIT_TESTS)),$(eval $(call unit_rule,$(t))))

deps:
	@deploy/deps.sh

deps-if-missing:
	@deploy/deps.sh --check >/dev/null 2>&1 || deploy/deps.sh

check:
	@$(MAKE) --no-print-directory deps-if-missing
	@$(MAKE) --no-print-directory check-build
	@$(MAKE) --no-print-directory lint format-check
	@FERRY_BUILD=$(BUILD) tests/run.sh

check-build: all $(UNIT_BINS)

demo:
	@$(MAKE) --no-print-directory deps-if-missing
	@$(MAKE) --no-print-directory all
	@deploy/demo.sh start

demo-stop:
	@deploy/demo.sh stop

bench:
	@$(MAKE) --no-print-directory deps-if-missing
	@$(MAKE) --no-print-directory all
	@tests/load/bench.sh

# The reliability campaign (tests/chaos/README.md): long versions of the scenarios whose short
# versions make check runs, then the fuzzers; a table of figures, logs under build/chaos/.
chaos:
	@$(MAKE) --no-print-directory deps-if-missing
	@$(MAKE) --no-print-directory all
	@FERRY_BUILD=$(BUILD) tests/chaos/run.sh

# libFuzzer targets: tests/fuzz/fuzz_NAME.c built with clang against every library source.
FUZZ_CFLAGS := -std=gnu11 -g -O1 -Werror=int-conversion -Werror=implicit-function-declaration -D_GNU_SOURCE -I. $(GATEWAY_CFLAGS) \
               -DFERRY_VERSION='"$(FERRY_VERSION)"' -DFERRY_GIT_REV='"fuzz"' \
               -fsanitize=fuzzer,address,undefined
# A target that includes the source file it fuzzes (to reach its statics) names it in
# FUZZ_OWN_<name>, which is then left out of its link.
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(GATEWAY_SRCS) $(RULES_SRCS) $(AUTH_SRCS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $(filter-out $(FUZZ_OWN_$*),$^) $(LIBS)

fuzz:
	@$(MAKE) --no-print-directory deps-if-missing
	@$(MAKE) --no-print-directory $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZ_TARGETS))
	@FUZZ_RUNS=$(FUZZ_RUNS) tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

format:
	clang-format -i $(C_FILES)

# The include boundaries between folders (gateway/README.md, "Folders"); make check runs it.
lint:
	@CC='$(CC)' CFLAGS_BASE='-std=gnu11 -D_GNU_SOURCE -I.' GATEWAY_CFLAGS='$(GATEWAY_CFLAGS)' \
	  RULES_CFLAGS='$(RULES_CFLAGS)' AUTH_CFLAGS='$(AUTH_CFLAGS)' \
	  SDK_CFLAGS='$(call pkg_cflags,$(SDK_PKGS))' tests/lint/lint_includes.sh

# Fails on any C file clang-format would change (make check runs it). Files are found on disk,
# not through git, so a copy of the tree is checked the same way.
C_FILES = $(shell find gateway rules auth clientsdk tests -name '*.[ch]' -not -path '*/node_modules/*')
format-check:
	@bad=$$(for f in $(C_FILES); do \
	  clang-format --dry-run -Werror "$$f" >/dev/null 2>&1 || echo "$$f"; done); \
	if [ -n "$$bad" ]; then echo "not formatted (run make format):"; echo "$$bad" | sed 's/^/  /'; \
	  exit 1; fi; echo "format: every C file is formatted"

clean:
	rm -rf $(BUILD)

-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)
