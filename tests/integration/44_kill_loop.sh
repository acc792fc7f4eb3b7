#!/usr/bin/env bash
# 44_kill_loop.sh -- the short version of tests/chaos/kill_loop.sh: kill -9 at random moments under a mixed writer (8 kills)
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=44_kill_loop CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/kill_loop.sh"
