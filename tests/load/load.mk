# tests/load/load.mk -- the load harness build/ferry-load (raw PowerSync streams, see README.md)
# (included before the top Makefile defines lib_objs, hence the patsubst)
LOAD_SRCS := tests/load/ferry_load.c tests/load/load_proto.c tests/load/load_hist.c \
             tests/load/load_token.c
PROGRAMS += $(BUILD)/ferry-load

$(BUILD)/ferry-load: $(patsubst %.c,$(OBJ)/%.o,$(LOAD_SRCS))
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)
