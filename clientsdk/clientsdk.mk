# clientsdk/clientsdk.mk -- libferry, the C client SDK: static and shared library, pkg-config
# file, the ferry-todo example, its unit test and `make install PREFIX=...`
#
# The SDK depends only on sqlite3, libcurl, jansson and pthread and shares no code with the
# server, so its programs link libferry and nothing of the server's libraries.

SDK_SRCS := clientsdk/src/ferry_db.c clientsdk/src/ferry_jrow.c clientsdk/src/ferry_oplog.c \
	clientsdk/src/ferry_ops.c clientsdk/src/ferry_publish.c clientsdk/src/ferry_rows.c \
	clientsdk/src/ferry_scan.c clientsdk/src/ferry_subs.c clientsdk/src/ferry_sync.c
SDK_OBJS = $(patsubst %.c,$(OBJ)/%.o,$(SDK_SRCS))
SDK_PKGS := sqlite3 libcurl jansson
SDK_LIBS := $(shell pkg-config --libs $(SDK_PKGS) 2>/dev/null) -lpthread -lm
SDK_VERSION := 0.1.0
PREFIX ?= /usr/local

# Position-independent objects serve both libraries; the public header is found as <ferry.h>.
$(SDK_OBJS): CFLAGS += -fPIC -Iclientsdk/include
$(OBJ)/clientsdk/examples/todo.o $(OBJ)/tests/unit/test_sdk.o $(OBJ)/tests/load/bench_sdk.o: \
	CFLAGS += -Iclientsdk/include

$(BUILD)/libferry.a: $(SDK_OBJS)
	@mkdir -p $(BUILD)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/libferry.so: $(SDK_OBJS)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libferry.so.0 -o $@ $^ $(SDK_LIBS)

$(BUILD)/ferry.pc: clientsdk/clientsdk.mk
	@mkdir -p $(BUILD)
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' '' \
	  'Name: ferry' 'Description: libferry, the C client SDK of the Ferry sync gateway' \
	  'Version: $(SDK_VERSION)' 'Requires.private: sqlite3 >= 3.35 libcurl jansson' \
	  'Libs: -L$${libdir} -lferry' 'Libs.private: -lpthread -lm' \
	  'Cflags: -I$${includedir}' >$@

$(BUILD)/ferry-todo: $(OBJ)/clientsdk/examples/todo.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libferry.a $(SDK_LIBS)

# The generic unit-test rule links the server libraries; the SDK's test links libferry only.
$(BUILD)/test_sdk: $(OBJ)/tests/unit/test_sdk.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libferry.a $(CHECK_LIBS) $(SDK_LIBS)

$(BUILD)/bench_sdk: $(OBJ)/tests/load/bench_sdk.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libferry.a $(SDK_LIBS)

PROGRAMS += $(BUILD)/libferry.a $(BUILD)/libferry.so $(BUILD)/ferry.pc $(BUILD)/ferry-todo
UNIT_TESTS += sdk

.PHONY: install
install: $(BUILD)/libferry.a $(BUILD)/libferry.so $(BUILD)/ferry.pc
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 clientsdk/include/ferry.h $(DESTDIR)$(PREFIX)/include/ferry.h
	install -m 644 $(BUILD)/libferry.a $(DESTDIR)$(PREFIX)/lib/libferry.a
	install -m 755 $(BUILD)/libferry.so $(DESTDIR)$(PREFIX)/lib/libferry.so.$(SDK_VERSION)
	ln -sf libferry.so.$(SDK_VERSION) $(DESTDIR)$(PREFIX)/lib/libferry.so.0
	ln -sf libferry.so.0 $(DESTDIR)$(PREFIX)/lib/libferry.so
	install -m 644 $(BUILD)/ferry.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/ferry.pc
