#!/usr/bin/env bash
# Mutation testing of a change: runs cargo-mutants on the lines of src/ that the change touched
# (--in-diff) and prints the mutants no test caught. Run it before a change lands (README,
# Contributing); not in CI (a mutant costs a rebuild and a full `cargo test`: minutes on 2 cores).
#
#   bash scripts/mutants.sh [BASE]
#
# BASE: the commit to diff against (default: the merge base of HEAD with origin/main). The diff
# is BASE against the working tree, so uncommitted edits count.
#
# Environment:
#   MUTANTS_TIME     bound on the whole run, seconds (default 3600); what did not run is listed
#   MUTANTS_TIMEOUT  per-mutant test timeout, seconds (default 600)
#   MUTANTS_JOBS     mutants built and tested at once (default 1: each needs a full build)
#   MUTANTS_OUT      where cargo-mutants writes mutants.out/ (default target/mutants-diff)
#   MUTANTS_LIST=1   list the mutants of the diff and stop
#
# Builds without the cuda feature, with the crate itself at opt-level 1 and no debug info (the
# dependencies keep Cargo.toml's opt-level 2): a mutant's rebuild is about twice as fast, and the
# tests still run in seconds. src/backend/cuda/ is excluded: it is compiled only with `cuda`.
# The exit status is 0 when every mutant was caught, 2 when some survived or timed out, 1 on an
# error, 124 when MUTANTS_TIME ran out first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "mutants.sh: installing cargo-mutants from crates.io" >&2
    cargo install cargo-mutants --locked
fi

base="${1:-}"
if [ -z "$base" ]; then
    if ! base="$(git merge-base HEAD origin/main 2>/dev/null)"; then
        echo "mutants.sh: no origin/main here; give the base commit: bash scripts/mutants.sh BASE" >&2
        exit 1
    fi
fi
git rev-parse --verify --quiet "$base^{commit}" >/dev/null || {
    echo "mutants.sh: $base is not a commit" >&2
    exit 1
}

out="${MUTANTS_OUT:-target/mutants-diff}"
mkdir -p "$out"
diff="$out/change.diff"
git diff "$base" -- src/ ':!src/backend/cuda' >"$diff"
if [ ! -s "$diff" ]; then
    echo "mutants.sh: no change to src/ since $(git rev-parse --short "$base"): nothing to mutate"
    exit 0
fi
echo "mutants.sh: mutating the lines of $(git diff --stat "$base" -- src/ ':!src/backend/cuda' | tail -n 1 | sed 's/^ *//') since $(git rev-parse --short "$base")"

export CARGO_PROFILE_DEV_OPT_LEVEL=1 CARGO_PROFILE_TEST_OPT_LEVEL=1
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
args=(--in-diff "$diff" --exclude 'src/backend/cuda/**' --output "$out"
      --timeout "${MUTANTS_TIMEOUT:-600}" --jobs "${MUTANTS_JOBS:-1}" --no-shuffle)
if [ "${MUTANTS_LIST:-0}" = 1 ]; then
    cargo mutants --list "${args[@]}"
    exit 0
fi

set +e
timeout --foreground "${MUTANTS_TIME:-3600}" cargo mutants "${args[@]}"
status=$?
set -e

m="$out/mutants.out"
echo
echo "== mutants.sh: survivors (no test failed) =="
cat "$m/missed.txt" 2>/dev/null || true
echo "== timed out =="
cat "$m/timeout.txt" 2>/dev/null || true
caught=$(wc -l <"$m/caught.txt" 2>/dev/null || echo 0)
missed=$(wc -l <"$m/missed.txt" 2>/dev/null || echo 0)
timeouts=$(wc -l <"$m/timeout.txt" 2>/dev/null || echo 0)
unviable=$(wc -l <"$m/unviable.txt" 2>/dev/null || echo 0)
echo "mutants.sh: caught $caught, missed $missed, timed out $timeouts, unviable $unviable (details: $m)"
case $status in
    0) exit 0 ;;
    124)
        echo "mutants.sh: MUTANTS_TIME (${MUTANTS_TIME:-3600} s) ran out; the mutants not listed above did not run" >&2
        exit 124
        ;;
    2 | 3) exit 2 ;;
    *) exit 1 ;;
esac
