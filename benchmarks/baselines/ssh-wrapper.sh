#!/bin/sh
# GNU Parallel 20221122 takes --ssh as one word when --controlmaster is on, so options
# cannot be passed inline: this execs ssh with the config ssh_noop.py generates (the dev
# cluster's identity file, known_hosts, ports, user, StrictHostKeyChecking=yes).
exec ssh -F "${BATCHPOOL_BENCH_SSH_CONFIG:?set BATCHPOOL_BENCH_SSH_CONFIG to an ssh config file}" "$@"
