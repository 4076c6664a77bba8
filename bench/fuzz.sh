#!/bin/sh
# Run the suite's fuzzing properties for minutes rather than seconds, with the
# hypothesis profile `long` (tests/conftest.py: 50,000 examples where the suite
# runs 200).  In-process properties take them all: the config loader, the PROXY
# parser, superd-httpd over a socketpair.  Those with real processes take a share
# of them, capped, as each module says: superd-httpd as a process with clients
# that misbehave (2,000 examples accepting for itself, 1,000 per connection under
# superd), the control socket of a real superd (10,000), superd import (10,000
# per property in-process, 200 through the command line).
#
# Each file runs on its own, with hypothesis' statistics (examples tried, how
# long they took) and its wall-clock time; the exit status is the first failure's.
#
#   bench/fuzz.sh                 every file
#   bench/fuzz.sh tests/test_control_fuzz.py -x     the files named, pytest options after them
cd "$(dirname "$0")/.." || exit 1
export HYPOTHESIS_PROFILE=long

# file, then the -k expression that picks its properties (the table-driven cases need no fuzzing)
FILES="tests/test_config_hostile.py:any or noise or schema
tests/test_proxy_fuzz.py:input or arrive
tests/test_httpd_fuzz.py:any or raw
tests/test_control_fuzz.py:any
tests/test_import_fuzz.py:import or command
tests/test_httpd_fuzz_live.py:survives"

only=""
while [ $# -gt 0 ] && [ "${1#tests/}" != "$1" ]; do
    only="$only $1"
    shift
done

status=0
printf '%s\n' "$FILES" | while IFS=: read -r file select; do
    case " $only " in
        "  ") ;;
        *" $file "*) ;;
        *) continue ;;
    esac
    echo "== $file ($(date -u +%H:%M:%S) UTC)"
    start=$(date +%s)
    .venv/bin/python -m pytest -q -p no:cacheprovider --hypothesis-show-statistics \
        "$file" -k "$select" "$@" || status=$?
    echo "== $file: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s, exit $status"
    [ "$status" -eq 0 ] || exit "$status"
done
