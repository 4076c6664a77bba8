#!/bin/sh
# Run the suite's fuzzing properties (config loader, PROXY parser, superd-httpd requests) for minutes
# rather than seconds: 50,000 examples each instead of 200.
cd "$(dirname "$0")/.." && HYPOTHESIS_PROFILE=long exec .venv/bin/python -m pytest -q \
    tests/test_config_hostile.py tests/test_proxy_fuzz.py tests/test_httpd_fuzz.py \
    -k "any or noise or input or arrive or raw or schema" "$@"
