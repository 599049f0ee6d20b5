#!/usr/bin/env bash
# virtio-blk sequential throughput in the guest, SharpVisor against QEMU TCG (Debian's
# qemu-system-x86) in the same run, with the IOMMU off, on in lazy mode and on in strict mode.
# The guest (the default kernel + busybox initramfs) writes and then reads 128 MiB of its disk with
# O_DIRECT 1 MiB requests, timing each with /proc/uptime, and prints MB/s.
#   bench/virtio-vs-qemu.sh [runs]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tools/common.sh"
runs=${1:-1}
apt_install qemu-system-x86 bc cpio
read -r kernel initrd < <("$root/tools/guest-image.sh" | tail -n1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/test"
cat >"$work/root/test/run" <<'GUEST'
#!/bin/sh
now() { cut -d' ' -f1 /proc/uptime; }
t0=$(now)
dd if=/dev/zero of=/dev/vda bs=1M count=128 oflag=direct 2>/dev/null || echo "BENCH-ERROR write"
t1=$(now)
dd if=/dev/vda of=/dev/null bs=1M count=128 iflag=direct 2>/dev/null || echo "BENCH-ERROR read"
t2=$(now)
echo "BENCH $t0 $t1 $t2"
poweroff -f
GUEST
chmod +x "$work/root/test/run"
cp "$initrd" "$work/initrd"
size=$(stat -c %s "$work/initrd"); pad=$(( (4 - size % 4) % 4 ))
head -c "$pad" /dev/zero >>"$work/initrd"
( cd "$work/root" && find . | cpio -o -H newc --quiet ) >>"$work/initrd"
truncate -s 256M "$work/disk.img"

dotnet build "$root/src/SharpVisor.Cli" -c Release -nologo -v quiet -clp:NoSummary >/dev/null
sv=("dotnet" "$root/artifacts/bin/SharpVisor.Cli/release/sharpvisor.dll" run --kernel "$kernel" --initrd "$work/initrd" --memory 512 --disk "$work/disk.img")
qemu=(qemu-system-x86_64 -M q35 -accel tcg -m 512 -nographic -no-reboot -kernel "$kernel" -initrd "$work/initrd"
      -drive "file=$work/disk.img,format=raw,if=none,id=d0,cache=writeback")

# "write MB/s read MB/s" from the guest's BENCH line in $work/out, or a reason.
rates() {
    local line
    line=$(grep -ao 'BENCH [0-9.]* [0-9.]* [0-9.]*' "$work/out" | tail -n1) || { echo "no result: $(tail -n2 "$work/out" | tr -d '\r\n')"; return; }
    grep -qa BENCH-ERROR "$work/out" && { echo "guest I/O error"; return; }
    read -r _ t0 t1 t2 <<<"$line"
    printf '%6.1f %6.1f' "$(echo "128 * 1.048576 / ($t1 - $t0)" | bc -l)" "$(echo "128 * 1.048576 / ($t2 - $t1)" | bc -l)"
}

printf '%-22s %-16s %-16s\n' "MB/s (write read)" "QEMU TCG" "SharpVisor"
for i in $(seq 1 "$runs"); do
    for mode in off lazy strict; do
        case $mode in
            off)    append="console=ttyS0 quiet"
                    qdev=(-device virtio-blk-pci,drive=d0,disable-legacy=on)
                    svdev=() ;;
            lazy)   append="console=ttyS0 quiet intel_iommu=on"
                    qdev=(-device intel-iommu,intremap=on -device virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on)
                    svdev=(--iommu on) ;;
            strict) append="console=ttyS0 quiet intel_iommu=on iommu.strict=1"
                    qdev=(-device intel-iommu,intremap=on -device virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on)
                    svdev=(--iommu on) ;;
        esac
        timeout 600 "${qemu[@]}" "${qdev[@]}" -append "$append" >"$work/out" 2>&1 || true
        q=$(rates)
        timeout 900 "${sv[@]}" "${svdev[@]}" --append "$append" >"$work/out" 2>&1 </dev/null || true
        s=$(rates)
        printf 'run %d, IOMMU %-7s %-16s %-16s\n' "$i" "$mode" "$q" "$s"
    done
done
