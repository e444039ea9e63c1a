#!/bin/sh
# make fuzz: builds the coverage-guided fuzz targets in fuzz/ (libFuzzer) on the stable
# toolchain and runs each for FUZZ_SECONDS (default 300) on one core, seeded from
# tests/vectors/ and fuzz/seeds/. The corpus grows in target/fuzz/corpus/ from run to run; a
# crash leaves its input in target/fuzz/artifacts/<target>/ and fails the run. Prints, per
# target: executions, executions per second, corpus size, crashes. Runs with different
# FUZZ_TARGETS can go side by side (one per core).
#   FUZZ_SECONDS=5 scripts/fuzz.sh             every target briefly (what make test does)
#   FUZZ_TARGETS="otp config" scripts/fuzz.sh   some of them
set -eu
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-300}
targets=${FUZZ_TARGETS:-"recovery_packet escrow_packet record sealed_token config otp drsk_file boot_flow"}
out=target/fuzz
triple=x86_64-unknown-linux-gnu

# What cargo-fuzz asks of rustc, minus nightly's -Zsanitizer: LLVM's coverage passes feed
# libFuzzer. The explicit --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export RUSTFLAGS
cargo build --release --quiet --manifest-path fuzz/Cargo.toml --target-dir "$out" --target "$triple"

seeds=$out/seeds
failed=0
printf '%-16s %12s %10s %8s %8s\n' target executions per-second corpus crashes
for t in $targets; do
    corpus=$out/corpus/$t
    artifacts=$out/artifacts/$t
    # Crashes of earlier runs are regression tests or vectors by now: only this run's count.
    rm -rf "$artifacts" "${seeds:?}/$t"
    mkdir -p "$corpus" "$artifacts" "$seeds/$t"
    [ -d "fuzz/seeds/$t" ] && cp fuzz/seeds/"$t"/* "$seeds/$t/"
    # The format vectors seed the packet targets: the bytes after each vector's header.
    for v in tests/vectors/*.vector; do
        kind=$(sed -n 's/^kind: //p' "$v" | head -n 1)
        [ "${kind}_packet" = "$t" ] && sed '1,/^$/d' "$v" > "$seeds/$t/$(basename "$v" .vector)"
    done
    log=$out/$t.log
    status=0
    # New inputs go to the first directory, the corpus; the seeds are read only.
    "$out/$triple/release/$t" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
        -timeout=30 -artifact_prefix="$artifacts/" "$corpus" "$seeds/$t" \
        > "$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: //p' "$log")
    crashes=$(find "$artifacts" -type f | wc -l)
    printf '%-16s %12s %10s %8s %8s\n' "$t" "${runs:-?}" "$(( ${runs:-0} / seconds ))" \
        "$(find "$corpus" -type f | wc -l)" "$crashes"
    if [ "$status" != 0 ] || [ "$crashes" != 0 ]; then
        echo "fuzz: $t failed (exit $status); see $log and $artifacts/" >&2
        failed=1
    fi
done
exit "$failed"
