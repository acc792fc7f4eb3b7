# tests/tests.mk -- test programs that are not unit tests of one module

# Ferry's side of the differential test against PowerSync's compiler (tests/rules_ref/).
PROGRAMS += $(BUILD)/rules-refdriver
$(BUILD)/rules-refdriver: $(OBJ)/tests/rules_ref/ref_driver.o $(BUILD)/librules.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/librules.a $(LIBS)

# The reliability scenarios' libferry replica (tests/chaos/): links libferry only.
$(OBJ)/tests/chaos/chaos_replica.o: CFLAGS += -Iclientsdk/include
$(BUILD)/chaos-replica: $(OBJ)/tests/chaos/chaos_replica.o $(BUILD)/libferry.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libferry.a $(SDK_LIBS)
PROGRAMS += $(BUILD)/chaos-replica

# libFuzzer targets of the request bodies, JWKS documents and libferry's lines (tests/fuzz/).
FUZZ_TARGETS += stream_request write_batch jwks sdk
FUZZ_OWN_write_batch := gateway/api/gw_write.c
# libferry's target links the SDK's sources only (it shares no code with the server).
$(BUILD)/fuzz/fuzz_sdk: tests/fuzz/fuzz_sdk.c $(wildcard clientsdk/src/*.c)
	@mkdir -p $(dir $@)
	clang -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Iclientsdk/include $(call pkg_cflags,$(SDK_PKGS)) \
	  -fsanitize=fuzzer,address,undefined -o $@ $^ $(SDK_LIBS)
