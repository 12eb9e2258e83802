#!/usr/bin/env bash
# Runs the parser fuzz test with a million inputs (the test suite runs 100k).
# Usage: scripts/fuzz-parsers.sh [inputs] ; replay a run with LUKV_SEED=<seed printed>.
set -euo pipefail
cd "$(dirname "$0")/.."
export LUKV_FUZZ_INPUTS="${1:-1000000}"
exec npx jest --runTestsByPath __tests__/parsers-fuzz.test.ts
