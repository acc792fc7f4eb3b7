# tests/tests.mk -- test programs that are not unit tests of one module

# Ferry's side of the differential test against PowerSync's compiler (tests/rules_ref/).
PROGRAMS += $(BUILD)/rules-refdriver
$(BUILD)/rules-refdriver: $(OBJ)/tests/rules_ref/ref_driver.o $(BUILD)/librules.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/librules.a $(LIBS)
