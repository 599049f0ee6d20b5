#!/usr/bin/env bash
# User-space workloads in the default guest (busybox), SharpVisor against QEMU TCG (Debian's
# qemu-system-x86) in the same run: a shell loop, printf of floats, fork+exec, an awk floating-point
# loop, md5sum over 4 MB, gzip of 800 KB of text, a numeric sort of 50,000 lines and sha256sum over 2 MB. Each is timed in the guest with /proc/uptime; prints both times and
# the ratio. The boot itself is not timed (bench/boot-vs-qemu.sh does that).
# SharpVisor runs once per tier (SV_TIERS, default "interp jit": --cpu interp and --cpu jit).
#   bench/userspace-vs-qemu.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tools/common.sh"
apt_install qemu-system-x86 cpio
read -r kernel initrd < <("$root/tools/guest-image.sh" | tail -n1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
with_test_script "$initrd" '#!/bin/sh
now() { cut -d" " -f1 /proc/uptime; }
echo
t0=$(now); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; t1=$(now); echo "U sh-loop-20000 $t0 $t1"
t0=$(now); i=0; while [ $i -lt 1000 ]; do printf "%.3f\n" $i.25 >/dev/null; i=$((i+1)); done; t1=$(now); echo "U printf-1000 $t0 $t1"
t0=$(now); for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do /bin/true; done; t1=$(now); echo "U fork-exec-20 $t0 $t1"
t0=$(now); awk "BEGIN{s=0; for(i=0;i<100000;i++) s+=i*1.5; print s}" >/dev/null; t1=$(now); echo "U awk-fp-100000 $t0 $t1"
t0=$(now); head -c 4000000 /dev/zero | md5sum >/dev/null; t1=$(now); echo "U md5sum-4mb $t0 $t1"
awk "BEGIN{for(i=0;i<50000;i++) print (i*7919)%100003, \"line\", i}" >/tmp/data
t0=$(now); gzip -c /tmp/data >/tmp/data.gz; t1=$(now); echo "U gzip-800kb $t0 $t1"
t0=$(now); sort -n /tmp/data >/dev/null; t1=$(now); echo "U sort-50000 $t0 $t1"
t0=$(now); head -c 2000000 /dev/zero | sha256sum >/dev/null; t1=$(now); echo "U sha256-2mb $t0 $t1"
poweroff -f' "$work/initrd"

dotnet build "$root/src/SharpVisor.Cli" -c Release -nologo -v quiet -clp:NoSummary >/dev/null
times() { grep -aoE 'U [a-z0-9-]+ [0-9.]+ [0-9.]+' | awk '{printf "%s %.2f\n", $2, $4 - $3}'; }
timeout 600 qemu-system-x86_64 -M q35 -accel tcg -m 512 -nographic -no-reboot -kernel "$kernel" -initrd "$work/initrd" \
    -append "console=ttyS0 quiet" 2>&1 | times >"$work/qemu" || true
[[ $(wc -l <"$work/qemu") -eq 8 ]] || die "QEMU's guest did not report every workload"
for tier in ${SV_TIERS:-interp jit}; do
    timeout 900 dotnet "$root/artifacts/bin/SharpVisor.Cli/release/sharpvisor.dll" run --kernel "$kernel" --initrd "$work/initrd" \
        --append "console=ttyS0 quiet" --memory 512 --cpu "$tier" </dev/null 2>&1 | times >"$work/sv" || true
    paste "$work/qemu" "$work/sv" | awk -v tier="$tier" '{printf "%-16s QEMU TCG %6.2f s   SharpVisor (%s) %6.2f s   ratio %.1fx\n", $1, $2, tier, $4, ($2 > 0 ? $4 / $2 : 0)}'
    [[ $(wc -l <"$work/sv") -eq 8 ]] || die "SharpVisor's guest (--cpu $tier) did not report every workload"
done
