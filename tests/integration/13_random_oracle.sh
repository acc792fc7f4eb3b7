#!/usr/bin/env bash
# 13_random_oracle.sh -- the short version of tests/chaos/random_oracle.sh: generated values, users and mutations against the SQL of the rules (2 seeds)
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=13_random_oracle CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/random_oracle.sh"
