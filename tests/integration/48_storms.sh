#!/usr/bin/env bash
# 48_storms.sh -- the short version of tests/chaos/storms.sh: client storms and abuse (500 clients, 10,000 keep-alive requests)
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=48_storms CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/storms.sh"
