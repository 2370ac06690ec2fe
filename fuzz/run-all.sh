#!/usr/bin/env bash
# Runs the whole protocol fuzz campaign: builds every target once, then fuzzes each
# for SECONDS, one at a time (the machine is shared: one core, one libFuzzer job),
# and prints execs, execs/s, coverage and crashes per target.
#
#   fuzz/run-all.sh SECONDS [TARGET...]      (from any directory; default 60 s, all targets)
#
# Each run starts from fuzz/corpus/<target> (kept between runs, not in git) topped up
# with the committed seeds, uses fuzz/dicts/<target>.dict when present, and writes
# crashes to fuzz/artifacts/<target>/. Logs: fuzz/logs/<target>.log.
# Environment: FUZZ_SANITIZER (default "none": the crate forbids unsafe code, and
# overflow checks and debug assertions stay on; use "address" for the C/unsafe
# dependencies), FUZZ_RSS_MB (default 2048), FUZZ_BUILD_JOBS (default 1).
# Exits 1 if any target crashed (or its run failed), 2 on a usage or build error.
set -euo pipefail

cd "$(dirname "$0")"

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
rss_mb="${FUZZ_RSS_MB:-2048}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install --locked cargo-fuzz" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for all targets (cargo fuzz builds one named target, or all of them);
# bounded so a stuck build cannot hang the campaign.
build_target=()
if [ "${#targets[@]}" -eq 1 ]; then
    build_target=("${targets[0]}")
fi
echo "== building ${#targets[@]} target(s) (sanitizer: $sanitizer)"
if ! CARGO_BUILD_JOBS="${FUZZ_BUILD_JOBS:-1}" timeout 3600 \
    cargo +nightly fuzz build --sanitizer "$sanitizer" "${build_target[@]}"; then
    echo "build failed" >&2
    exit 2
fi
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="target/$triple/release"

mkdir -p logs
results=()
failed=0
for t in "${targets[@]}"; do
    bin="$bin_dir/$t"
    if [ ! -x "$bin" ]; then
        echo "no binary for target $t" >&2
        exit 2
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ -d "seeds/$t" ]; then
        cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    fi
    dict=()
    if [ -f "dicts/$t.dict" ]; then
        dict=("-dict=dicts/$t.dict")
    fi
    marker="$(mktemp)"
    log="logs/$t.log"
    echo "== $t: ${secs}s"
    rc=0
    # libFuzzer stops itself after max_total_time; the outer timeout is a backstop
    # (a hang, a slow final merge) so the campaign is always bounded.
    timeout -k 10 $(( secs + 60 )) "$bin" "corpus/$t" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb="$rss_mb" \
        -artifact_prefix="artifacts/$t/" "${dict[@]}" >"$log" 2>&1 || rc=$?
    crashes="$(find "artifacts/$t" -type f -newer "$marker" | wc -l)"
    rm -f "$marker"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    # The last status line ("#N DONE cov: X ft: Y ..." or the last "#N ... cov:" line).
    status_line="$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1 || true)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")"
    corp="$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status_line")"
    note=""
    if [ "$crashes" -gt 0 ] || [ "$rc" -ne 0 ]; then
        # The log is not kept by CI: show why it failed (the panic and its stack).
        echo "-- $t failed (exit $rc); the end of $log:"
        tail -n 60 "$log"
    fi
    if [ "$crashes" -gt 0 ]; then
        note="CRASH: $(find "artifacts/$t" -type f -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)"
        failed=1
    elif [ "$rc" -ne 0 ]; then
        note="exit $rc, see $log"
        failed=1
    fi
    results+=("$(printf '%-22s %12s %10s %7s %8s %7s %8s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "$note")")
done

echo
printf '%-22s %12s %10s %7s %8s %7s %8s\n' target execs execs/s cov ft corpus crashes
printf '%s\n' "${results[@]}"
exit "$failed"
