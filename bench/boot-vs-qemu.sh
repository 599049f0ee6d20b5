#!/usr/bin/env bash
# Boots the same Debian kernel + busybox initramfs on SharpVisor and on QEMU TCG (Debian's
# qemu-system-x86) in the same run, each until the guest powers off, and prints both wall times
# and the ratio. The guest's init runs `poweroff -f` at once through a test layer.
#   bench/boot-vs-qemu.sh [runs]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tools/common.sh"
runs=${1:-1}
apt_install qemu-system-x86 bc cpio
read -r kernel initrd < <("$root/tools/guest-image.sh" | tail -n1)

# A test layer whose /test/run powers off immediately.
layer=$(mktemp -d)
trap 'rm -rf "$layer"' EXIT
with_test_script "$initrd" $'#!/bin/sh\necho SharpVisor-bench-userspace-reached\npoweroff -f' "$layer/initrd"

dotnet build "$root/src/SharpVisor.Cli" -c Release -nologo -v quiet -clp:NoSummary >/dev/null
cmdline="console=ttyS0 quiet"
time_it() { local s e; s=$(date +%s.%N); "$@" >"$layer/out" 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc; }

for i in $(seq 1 "$runs"); do
    q=$(time_it timeout 300 qemu-system-x86_64 -M q35 -accel tcg -m 512 -nographic -no-reboot -kernel "$kernel" -initrd "$layer/initrd" -append "$cmdline")
    grep -q SharpVisor-bench-userspace-reached "$layer/out" || die "QEMU did not reach user space"
    s=$(time_it timeout 900 dotnet "$root/artifacts/bin/SharpVisor.Cli/release/sharpvisor.dll" run --kernel "$kernel" --initrd "$layer/initrd" --append "$cmdline" --memory 512)
    if grep -q SharpVisor-bench-userspace-reached "$layer/out"; then
        printf 'run %d: QEMU TCG %.2f s, SharpVisor %.2f s, ratio %.1fx\n' "$i" "$q" "$s" "$(echo "$s / $q" | bc -l)"
    else
        printf 'run %d: QEMU TCG %.2f s, SharpVisor did not reach user space (%.2f s): %s\n' "$i" "$q" "$s" "$(tail -n1 "$layer/out")"
    fi
done
