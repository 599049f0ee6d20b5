#!/usr/bin/env bash
# virtio throughput in the guest, SharpVisor against QEMU TCG (Debian's qemu-system-x86) in the
# same run, with the IOMMU off, on in lazy mode and on in strict mode:
# - virtio-blk: the guest (the default kernel + busybox initramfs) writes and then reads 128 MiB of
#   its disk with O_DIRECT 1 MiB requests, timing each with /proc/uptime;
# - virtio-net: two VMs of the same VMM joined by the stream backend (QEMU: -netdev stream); one
#   sends 32 MiB over TCP with busybox nc, timed on the sender from the first byte to the
#   receiver's close.
#   bench/virtio-vs-qemu.sh [runs]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tools/common.sh"
runs=${1:-1}
apt_install qemu-system-x86 bc cpio
read -r kernel initrd < <("$root/tools/guest-image.sh" | tail -n1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
with_test_script "$initrd" '#!/bin/sh
now() { cut -d" " -f1 /proc/uptime; }
t0=$(now)
dd if=/dev/zero of=/dev/vda bs=1M count=128 oflag=direct 2>/dev/null || echo "BENCH-ERROR write"
t1=$(now)
dd if=/dev/vda of=/dev/null bs=1M count=128 iflag=direct 2>/dev/null || echo "BENCH-ERROR read"
t2=$(now)
echo "BENCH $t0 $t1 $t2"
poweroff -f' "$work/initrd"
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
# Network: a receiver (10.0.2.1, listens) and a sender (10.0.2.2) test layer.
layer() { with_test_script "$initrd" "$2" "$work/$1.initrd"; } # NAME SCRIPT -> $work/NAME.initrd
layer receiver '#!/bin/sh
ip link set eth0 up; ip addr add 10.0.2.1/24 dev eth0
mkfifo /tmp/hold; sleep 600 > /tmp/hold &
echo "NETRECEIVED $(nc -l -p 5001 < /tmp/hold | wc -c)"
poweroff -f'
layer sender '#!/bin/sh
now() { cut -d" " -f1 /proc/uptime; }
ip link set eth0 up; ip addr add 10.0.2.2/24 dev eth0
n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1; do n=$((n + 1)); [ $n -ge 60 ] && break; sleep 1; done
sleep 1
t0=$(now); dd if=/dev/zero bs=64k count=512 2>/dev/null | nc 10.0.2.1 5001; t1=$(now)
echo "NETBENCH $t0 $t1"
poweroff -f'

# "MB/s" of the sender's NETBENCH line in $work/sender.out, or a reason.
net_rate() {
    local line
    grep -qa 'NETRECEIVED 33554432' "$work/receiver.out" || { echo "receiver got $(grep -ao 'NETRECEIVED [0-9]*' "$work/receiver.out" || echo nothing)"; return; }
    line=$(grep -ao 'NETBENCH [0-9.]* [0-9.]*' "$work/sender.out" | tail -n1) || { echo "no result"; return; }
    read -r _ t0 t1 <<<"$line"
    printf '%6.1f' "$(echo "32 * 1.048576 / ($t1 - $t0)" | bc -l)"
}
port=$((20000 + RANDOM % 20000))

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

        # Network: the same two guests on QEMU (server first: QEMU 7.2 does not retry a connect) and on SharpVisor.
        qnet=(${qdev[@]/virtio-blk-pci,drive=d0/virtio-net-pci,netdev=n0})
        port=$((port + 1))
        timeout 600 qemu-system-x86_64 -M q35 -accel tcg -m 512 -nographic -no-reboot -kernel "$kernel" -initrd "$work/receiver.initrd" \
            -netdev "stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=$port" "${qnet[@]}" -append "$append" >"$work/receiver.out" 2>&1 &
        sleep 2
        timeout 600 qemu-system-x86_64 -M q35 -accel tcg -m 512 -nographic -no-reboot -kernel "$kernel" -initrd "$work/sender.initrd" \
            -netdev "stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=$port" "${qnet[@]}" -append "$append" >"$work/sender.out" 2>&1 || true
        wait
        q=$(net_rate)
        port=$((port + 1))
        svnet=("dotnet" "$root/artifacts/bin/SharpVisor.Cli/release/sharpvisor.dll" run --kernel "$kernel" --memory 512 "${svdev[@]}" --append "$append")
        timeout 900 "${svnet[@]}" --initrd "$work/receiver.initrd" --net "stream,listen=127.0.0.1:$port" >"$work/receiver.out" 2>&1 </dev/null &
        timeout 900 "${svnet[@]}" --initrd "$work/sender.initrd" --net "stream,connect=127.0.0.1:$port" >"$work/sender.out" 2>&1 </dev/null || true
        wait
        s=$(net_rate)
        printf 'run %d, IOMMU %-7s net MB/s: QEMU TCG %-10s SharpVisor %-10s\n' "$i" "$mode" "$q" "$s"
    done
done
