#!/bin/sh
# Syscalls per connection on each dispatcher's accept-to-spawn path
# (strace -c -p on the daemon alone), plus a py-spy sample of superd.
# See bench/profile_dispatch.py; writes bench/out/profile.md.
#
#   bench/profile_dispatch.sh                  # every contender, 3000 connections
#   bench/profile_dispatch.sh 5000 superd      # N connections, chosen contenders
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/.venv/bin/python" "$root/bench/profile_dispatch.py" "$@"
