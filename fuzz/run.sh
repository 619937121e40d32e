#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other in
# one process (one core), and prints the executions of each.
#
#   fuzz/run.sh [seconds] [target...]     targets: signature envelope config
#
# Needs cargo-fuzz (installed here if missing). cargo-fuzz passes `-Z` flags
# (sanitizer, coverage) to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them, so no nightly toolchain is needed. Corpora grow in
# fuzz/corpus/<target>; a failing input lands in fuzz/artifacts/<target>/ and
# replays with `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> <file>`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(signature envelope config)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi

started=$SECONDS
cargo fuzz build --fuzz-dir .
echo "fuzz: built in $((SECONDS - started)) s"

# routes.toml and the bad-config snapshots seed the config corpus; the key
# names of src/config/raw.rs make its dictionary.
mkdir -p corpus/config logs
cp ../routes.toml corpus/config/seed-routes.toml
for f in ../tests/config/bad/*.toml; do cp "$f" "corpus/config/seed-bad-$(basename "$f")"; done
{
    sed -n 's/^ *pub \([a-z_]*\):.*/"\1"/p' ../src/config/raw.rs | sort -u
    for table in server admin bus idempotency telemetry alerts sources connections consumers; do
        echo "\"[$table]\""
        echo "\"[$table.\""
    done
    printf '%s\n' '"[[routes]]"' '"env:"' '"file:"' '"="' '"\""' '"30s"' '"1MiB"' '"*"'
} > logs/config.dict

failed=()
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    extra=()
    [ "$target" = config ] && extra=(-dict=logs/config.dict)
    echo "fuzz: $target for ${seconds} s"
    status=0
    cargo fuzz run --fuzz-dir . "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${extra[@]}" \
        >"logs/$target.log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$target.log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        tail -40 "logs/$target.log"
        summary+=("$(printf '%-10s FAILED after %s executions (see fuzz/logs/%s.log, fuzz/artifacts/%s/)' "$target" "${runs:-?}" "$target" "$target")")
    else
        summary+=("$(printf '%-10s %10s executions in %s s, corpus %s inputs' "$target" "${runs:-?}" "$seconds" "$corpus")")
    fi
done

echo "fuzz: executions per target"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}"
    exit 1
fi
