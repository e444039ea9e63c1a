#!/bin/sh
# make test: the client binary goes into every initramfs, so its size is a budget, kept by this
# check rather than by memory: the stripped release build of `lifeline` must stay at or under
# LIFELINE_MAX_BYTES (default 3.5 MiB). docs/benchmarks.md has the history.
set -eu
cd "$(dirname "$0")/.."
limit=${LIFELINE_MAX_BYTES:-3670016}
cargo build --release --quiet --bin lifeline
size=$(stat -c %s target/release/lifeline)
echo "lifeline (release, stripped): $size bytes; limit $limit"
if [ "$size" -gt "$limit" ]; then
    echo "check-size: lifeline is $((size - limit)) bytes over its budget; see docs/benchmarks.md" >&2
    exit 1
fi
