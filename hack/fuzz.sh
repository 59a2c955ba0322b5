#!/usr/bin/env bash
# Fuzzes the metrics parser (src/usage/parse.rs) with AFL++ through cargo-afl, on the stable
# toolchain: installs cargo-afl (which builds AFL++ from its crate) when missing, builds the
# fuzz targets of fuzz/, runs one of them for the time given, then minimises what it found into
# fuzz/corpus/<format>/, which tests/fuzz_corpus.rs replays in CI. Not part of CI itself: too
# long. See docs/fuzzing.md.
#
#   hack/fuzz.sh build                      install cargo-afl and build the targets, nothing else
#   hack/fuzz.sh FORMAT SECONDS [--strict-reasons]
#   hack/fuzz.sh minimise FORMAT            minimise the last run of FORMAT into the corpus again
#
# FORMAT: opentelemetry, vllm, litellm or custom. --strict-reasons also makes an error whose
# reason is longer than fuzz/src/lib.rs's STRICT_REASON_LIMIT a crash; such a run leaves the
# corpus alone. The run's own files are in fuzz/out/FORMAT/ (not in git); crashes and hangs
# stay there, under default/crashes/ and default/hangs/, with the command to replay them.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ=$REPO/fuzz
CARGO_AFL_VERSION=0.18.2 # the version of the afl crate in fuzz/Cargo.lock

usage() {
  sed -n '8,10p' "${BASH_SOURCE[0]}" | sed 's/^#  //' >&2
  exit 2
}

install() {
  if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION\b"; then
    echo "==> installing cargo-afl $CARGO_AFL_VERSION (it builds AFL++ too)"
    cargo install --locked --force cargo-afl --version "$CARGO_AFL_VERSION"
  fi
  # AFL++ and its runtime for this rustc: built by the install, to build again after a
  # toolchain change (`config --build` refuses when they are there already).
  if cargo afl fuzz -h 2>&1 | grep -q 'was not built'; then
    cargo afl config --build
  fi
}

build() {
  echo "==> building the fuzz targets"
  (cd "$FUZZ" && cargo afl build --locked --release)
}

# The directory of the AFL++ that cargo-afl built for this rustc.
afl_bin() {
  local rustc hash
  rustc=$(rustc --version | cut -d' ' -f2)
  hash=$(rustc -vV | sed -n 's/^commit-hash: \(.......\).*/\1/p')
  echo "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc-$hash/afl.rs-$CARGO_AFL_VERSION/afl/bin"
}

# Minimises the last run's queue and the corpus of format $1 into fuzz/corpus/$1/: the fewest
# files that reach every edge any of them reaches (-e: hit counts aside, which keeps the corpus
# small). afl-cmin.bash, not cargo-afl's afl-cmin (the Python one), which keeps no file of a
# persistent-mode target.
minimise() {
  local format=$1 target=$FUZZ/target/release/$1 in=$FUZZ/out/$1.in min=$FUZZ/out/$1.min
  echo "==> minimising the queue and the corpus into fuzz/corpus/$format/"
  rm -rf "$min" "$in"
  mkdir -p "$in"
  cp "$FUZZ/out/$format"/default/queue/id* "$in"/
  for f in "$FUZZ/corpus/$format"/*; do [ -f "$f" ] && cp "$f" "$in/"; done
  AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 "$(afl_bin)/afl-cmin.bash" -e -i "$in" -o "$min" -t 1000 -- "$target" \
    >"$FUZZ/out/$format.cmin.log" 2>&1 || {
    tail -c 2000 "$FUZZ/out/$format.cmin.log" >&2
    exit 1
  }
  rm -rf "$FUZZ/corpus/$format" "$in"
  mkdir -p "$FUZZ/corpus/$format"
  # Named by content, so that runs add files rather than rename them.
  for f in "$min"/*; do
    cp "$f" "$FUZZ/corpus/$format/$(sha1sum "$f" | cut -c1-16)"
  done
  rm -rf "$min"
  echo "==> fuzz/corpus/$format: $(find "$FUZZ/corpus/$format" -type f | wc -l) files, $(du -cb "$FUZZ/corpus/$format"/* | tail -1 | cut -f1) bytes"
}

[ $# -ge 1 ] || usage
case "$1" in
build)
  install
  build
  exit 0
  ;;
minimise)
  [ $# -eq 2 ] || usage
  minimise "$2"
  exit 0
  ;;
esac
[ $# -ge 2 ] || usage
format=$1 seconds=$2 strict=
case "$format" in opentelemetry | vllm | litellm | custom) ;; *) usage ;; esac
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
if [ $# -ge 3 ]; then
  [ "$3" = --strict-reasons ] || usage
  strict=1
fi

install
build
target=$FUZZ/target/release/$format
out=$FUZZ/out/$format
in=$FUZZ/out/$format.in
rm -rf "$out" "$in"
mkdir -p "$in" "$FUZZ/corpus/$format"
# The seeds and the corpus of this format, and the other formats' too: a body of one format
# is a good start for another's lines.
for dir in "$FUZZ"/seeds/* "$FUZZ"/corpus/*; do
  for f in "$dir"/*; do
    [ -f "$f" ] && cp "$f" "$in/$(basename "$dir")-$(basename "$f")"
  done
done

echo "==> fuzzing $format for ${seconds}s"
# AFL_NO_AFFINITY: no core of its own on a machine shared with others. AFL_SKIP_CPUFREQ and
# AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES: start whatever the CPU governor and core_pattern.
# -t 1000: an input that takes over a second is a hang (the largest take milliseconds).
env AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  ${strict:+FUZZ_STRICT_REASONS=1} \
  cargo afl fuzz -i "$in" -o "$out" -x "$FUZZ/metrics.dict" -t 1000 -V "$seconds" -- "$target" >"$out.log" 2>&1 ||
  {
    tail -40 "$out.log" >&2
    exit 1
  }
rm -rf "$in"

stats=$out/default/fuzzer_stats
echo "==> $format: $(grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|edges_found|total_edges|stability|saved_crashes|saved_hangs) ' "$stats" |
  sed 's/ *: */=/' | tr '\n' ' ')"
found=0
for kind in crashes hangs; do
  for f in "$out"/default/"$kind"/id*; do
    [ -f "$f" ] || continue
    found=1
    echo "$kind: $f"
    echo "  replay: ${strict:+FUZZ_STRICT_REASONS=1 }$target < '$f'"
  done
done
if [ -n "$strict" ]; then
  echo "==> --strict-reasons: the corpus is left as it was"
  exit "$found"
fi

minimise "$format"
exit "$found"
