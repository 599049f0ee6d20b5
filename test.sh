#!/usr/bin/env bash
# Builds SharpVisor and runs every test. Usage: ./test.sh [--filter EXPR]
# On a fresh Debian machine of the project's kind this is all the set-up there is: it restores NuGet
# packages and installs the Debian packages the integration tests use.
set -euo pipefail
cd "$(dirname "$0")"
source tools/common.sh

filter=()
if [[ "${1:-}" == "--filter" && -n "${2:-}" ]]; then filter=(--filter "$2"); fi

require_dotnet
# iasl validates the ACPI tables; the Machine tests fetch Debian's kernel with apt-get download;
# qemu-img and qemu-io (qemu-utils) create and check the qcow2 images of the Devices tests;
# e2fsck and debugfs (e2fsprogs) check the guest's ext4 disk on the host; the network tests run a
# QEMU guest (qemu-system-x86) as the other end of a link; gcc and libc6-dev build the static C
# programs the integration tests run inside the guest (tests/SharpVisor.Integration.Tests/GuestPrograms).
apt_install acpica-tools cpio e2fsprogs qemu-utils qemu-system-x86 gcc libc6-dev
step "build (Release, warnings are errors)"
dotnet build SharpVisor.slnx -c Release -nologo -v quiet -clp:NoSummary

step "format check"
dotnet format SharpVisor.slnx --verify-no-changes --no-restore -v quiet

step "tests"
results=$(mktemp -d)
status=0
dotnet test SharpVisor.slnx -c Release --no-build -nologo "${filter[@]}" \
    --logger "trx" --results-directory "$results" -- RunConfiguration.TreatNoTestsAsError=false || status=$?

# ---- fuzzing (issue 16) -------------------------------------------------------------------------
# A short coverage-guided run of every parser of untrusted bytes: AFL++ (Debian's afl++) drives each
# target of fuzz/SharpVisor.Fuzz for FUZZ_SECONDS (default 20; 0 skips it). A crash, or a hang that
# replays as one, fails the run with the input printed in hex (and kept in fuzz/findings/).
fuzz_seconds=${FUZZ_SECONDS:-20}
if [[ "$fuzz_seconds" -gt 0 && ${#filter[@]} -eq 0 ]]; then
    apt_install afl++
    step "fuzzing: afl-fuzz, $fuzz_seconds s per target"
    fuzz/run.sh all "$fuzz_seconds" || status=1
fi
# ---- end of fuzzing -----------------------------------------------------------------------------

# One closing line that CI reads: totals over every test assembly.
passed=0; failed=0; skipped=0
for f in "$results"/*.trx; do
    [[ -f "$f" ]] || continue
    line=$(grep -o '<Counters [^>]*>' "$f")
    p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$line"); passed=$((passed + ${p:-0}))
    x=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$line"); failed=$((failed + ${x:-0}))
    n=$(sed -n 's/.* notExecuted="\([0-9]*\)".*/\1/p' <<<"$line"); skipped=$((skipped + ${n:-0}))
done
rm -rf "$results"
echo "$passed passed, $failed failed, $skipped skipped"
if [[ $status -ne 0 || $failed -ne 0 || $passed -eq 0 ]]; then exit 1; fi
