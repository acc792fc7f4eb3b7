# tests/tests.mk -- test programs that are not unit tests of one module

# The reliability scenarios' libferry replica (tests/chaos/): links libferry only.
$(OBJ)/tests/chaos/chaos_replica.o: CFLAGS += -Iclientsdk/include
$(BUILD)/chaos-replica: $(OBJ)/tests/chaos/chaos_replica.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libferry.a $(SDK_LIBS)
PROGRAMS += $(BUILD)/chaos-replica
