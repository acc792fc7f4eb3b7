#!/usr/bin/env bash
# 46_pg_failover.sh -- the short version of tests/chaos/pg_failover.sh: Postgres restarted, and failed over to a promoted standby
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=46_pg_failover CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/pg_failover.sh"
