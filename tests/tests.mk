# tests/tests.mk -- test programs that are not unit tests of one module
