#!/usr/bin/env bash
# 47_disk_full.sh -- the short version of tests/chaos/disk_full.sh: the disks under ferry's storage and a libferry replica fill up
#
# `make chaos` runs the long version (tests/chaos/run.sh); what it checks is described there.
T_NAME=47_disk_full CHAOS_MODE=short exec bash "$(dirname "$0")/../chaos/disk_full.sh"
