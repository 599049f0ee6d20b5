#!/usr/bin/env bash
# Coverage-guided fuzzing of SharpVisor's parsers of untrusted bytes with AFL++ and SharpFuzz.
# Usage: fuzz/run.sh TARGET|all [SECONDS]   (default 600 s per target; `all` runs every target in turn)
# Targets: dotnet run --project fuzz/SharpVisor.Fuzz -- list
#
# It publishes fuzz/SharpVisor.Fuzz into fuzz/.build, instruments the parsers' code with `sharpfuzz`
# (SharpVisor.Machine.Boot, SharpVisor.Devices.Storage, SharpCompress), and runs afl-fuzz with the
# seeds in fuzz/corpus/TARGET for SECONDS. Findings land in fuzz/findings/TARGET (a later run resumes
# from there). Every crash, and every hang that replays as one, is printed with its input in hex and
# makes the script exit 1: turn it into a regression test (see README, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/common.sh

target=${1:-}
seconds=${2:-600}
[[ -n "$target" ]] || die "usage: fuzz/run.sh TARGET|all [SECONDS]"
[[ "$seconds" =~ ^[0-9]+$ ]] || die "fuzz/run.sh: SECONDS must be a whole number, not '$seconds'"

require_dotnet
command -v afl-fuzz >/dev/null 2>&1 || apt_install afl++
tools=fuzz/.tools
if [[ ! -x $tools/sharpfuzz ]]; then
    step "installing the sharpfuzz instrumenter (SharpFuzz.CommandLine 2.3.0)"
    dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$tools" >/dev/null
fi

build=fuzz/.build/publish
plain=fuzz/.build/plain
step "publishing and instrumenting the fuzz harness"
rm -rf "$build" "$plain"
dotnet publish fuzz/SharpVisor.Fuzz -c Release -o "$build" -nologo -v quiet -clp:NoSummary
# Findings are replayed by an uninstrumented copy: instrumented code needs afl-fuzz's coverage map.
cp -r "$build" "$plain"
replay="$plain/SharpVisor.Fuzz.dll"
# Only the code that parses untrusted bytes is instrumented: its branches are what AFL steers by.
"$tools/sharpfuzz" "$build/SharpVisor.Machine.dll" SharpVisor.Machine.Boot
"$tools/sharpfuzz" "$build/SharpVisor.Devices.dll" SharpVisor.Devices.Storage
"$tools/sharpfuzz" "$build/SharpCompress.dll"
harness="$build/SharpVisor.Fuzz.dll"

if [[ "$target" == all ]]; then
    mapfile -t targets < <(dotnet "$harness" list | awk '{ print $1 }')
else
    dotnet "$harness" list | awk '{ print $1 }' | grep -qx "$target" || die "unknown fuzz target '$target' (see: dotnet $harness list)"
    targets=("$target")
fi

# afl-fuzz runs the .NET host, which is not compiled with AFL's instrumentation (SharpFuzz's fork
# server speaks the protocol instead); there may be no way to set core_pattern or the CPU governor.
export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_FORKSRV_INIT_TMOUT=60000
export AFL_FAST_CAL=1

failed=0
summary=()
for t in "${targets[@]}"; do
    out=fuzz/findings/$t
    mkdir -p "$out"
    step "afl-fuzz $t for $seconds s (findings in $out)"
    # -t: a parser given a small input has 5 s before afl-fuzz calls it a hang; -m none: .NET reserves
    # far more address space than it uses.
    afl-fuzz -i "fuzz/corpus/$t" -o "$out" -t 5000 -m none -V "$seconds" -- "$(command -v dotnet)" "$harness" afl "$t" \
        >"$out/afl.log" 2>&1 || { tail -n 30 "$out/afl.log" >&2; die "afl-fuzz $t failed (log: $out/afl.log)"; }

    stats=$out/default/fuzzer_stats
    field() { sed -n "s/^$1 *: *//p" "$stats"; }
    execs=$(field execs_done); rate=$(field execs_per_sec); paths=$(field corpus_count)
    found=("$out"/default/crashes/id:* "$out"/default/hangs/id:*)

    # Every finding is replayed with this build, without afl-fuzz: a hang under afl-fuzz may be a busy
    # machine (it counts if the replay takes > 10 s too), and a campaign resumed after a fix still
    # holds the crashes it found before (they count no more once they replay cleanly).
    failing=()
    for f in "${found[@]}"; do
        [[ -e "$f" ]] || continue
        dotnet "$replay" replay "$t" -t 10 "$f" >/dev/null 2>&1 || failing+=("$f")
    done
    for f in "${failing[@]}"; do
        printf '\n%s %s finding: %s (%s bytes)\n' "$t" "$([[ $f == */hangs/* ]] && echo hang || echo crash)" "$f" "$(wc -c <"$f")" >&2
        dotnet "$replay" replay "$t" -t 10 "$f" >&2 || true
        od -A x -t x1z -v "$f" | head -n 64 >&2
    done
    reported=$(( $(field saved_crashes) + $(field saved_hangs) ))
    line="$t: $execs execs ($rate/s; totals for the campaign in $out), $paths paths, ${#failing[@]} failing inputs ($reported crashes and hangs saved by afl-fuzz)"
    summary+=("$line")
    echo "$line" >&2
    if [[ ${#failing[@]} -gt 0 ]]; then failed=1; fi
done

step "fuzzing summary"
printf '%s\n' "${summary[@]}" >&2
exit $failed
