#!/usr/bin/env bash
# 45_net_faults.sh -- the short version of tests/chaos/net_faults.sh: the network between ferry and Postgres: silence, loss, resets, latency
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=45_net_faults CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/net_faults.sh"
