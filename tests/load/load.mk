# tests/load/load.mk -- the load harness: build/ferry-load (raw PowerSync streams) and
# build/ferry-load-sdk (its SDK mode: libferry clients), see README.md
# (included before the top Makefile defines lib_objs, hence the patsubst)
LOAD_SRCS := tests/load/ferry_load.c tests/load/load_proto.c tests/load/load_hist.c \
             tests/load/load_token.c
PROGRAMS += $(BUILD)/ferry-load $(BUILD)/ferry-load-sdk

$(BUILD)/ferry-load: $(patsubst %.c,$(OBJ)/%.o,$(LOAD_SRCS))
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)

# the SDK mode links libferry and the harness's histogram and token code, nothing of the server
$(OBJ)/tests/load/load_sdk.o: CFLAGS += -Iclientsdk/include
$(BUILD)/ferry-load-sdk: $(OBJ)/tests/load/load_sdk.o $(OBJ)/tests/load/load_hist.o \
                         $(OBJ)/tests/load/load_token.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libferry.a $(SDK_LIBS) -lssl -lcrypto

# stream opens at a fixed rate (bench_stream_opens.sh)
PROGRAMS += $(BUILD)/bench-opens
$(BUILD)/bench-opens: $(OBJ)/tests/load/bench_opens.o $(OBJ)/tests/load/load_hist.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
