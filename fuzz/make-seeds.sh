#!/usr/bin/env bash
# Rebuilds the seed corpora in fuzz/corpus/<target>/ from scratch: tiny valid and near-valid inputs
# (a few KiB each) made with the host's assembler, linker, compressors and qemu-img. The results are
# committed; run this only to change the seeds. Findings (crash-*, hang-*) already in the corpus are kept.
# Needs: binutils (as, ld, strip), gzip, xz, zstd, bzip2, qemu-utils (qemu-img, qemu-io), python3.
set -euo pipefail
cd "$(dirname "$0")"
out=$PWD/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in kernel bzimage payload elf multiboot qcow2; do
    mkdir -p "$out/$t"
    find "$out/$t" -maxdepth 1 -name 'seed-*' -delete
done

# ---- ELF kernels ------------------------------------------------------------------------------
# A vmlinux-like ELF64 at LOAD_PHYSICAL_ADDR (16 MiB) with the Xen PVH entry note
# (XEN_ELFNOTE_PHYS32_ENTRY = 18, name "Xen", 8-byte address as Linux emits it).
cat >"$work/elf64.s" <<'ASM'
    .text
    .globl _start
_start:
    hlt
    jmp _start
    .section .note.Xen, "a", @note
    .long 4, 8, 18
    .asciz "Xen"
    .quad _start
    .bss
    .skip 0x2000
ASM
as --64 -o "$work/elf64.o" "$work/elf64.s"
ld --no-warn-rwx-segments -m elf_x86_64 -N -Ttext=0x1000000 --section-start=.note.Xen=0x1003000 -e _start -o "$work/elf64-pvh" "$work/elf64.o"
strip -s "$work/elf64-pvh"
# The same without the note (64-bit boot protocol entry).
sed '/\.section \.note/,/\.quad/d' "$work/elf64.s" >"$work/elf64-plain.s"
as --64 -o "$work/elf64-plain.o" "$work/elf64-plain.s"
ld --no-warn-rwx-segments -m elf_x86_64 -N -Ttext=0x1000000 -e _start -o "$work/elf64-plain" "$work/elf64-plain.o"
strip -s "$work/elf64-plain"
# ELF32 with the PVH note (4-byte descriptor): a 32-bit PVH kernel.
sed -e 's/--64//; s/\.quad _start/.long _start/; s/\.long 4, 8, 18/.long 4, 4, 18/' "$work/elf64.s" >"$work/elf32.s"
as --32 -o "$work/elf32.o" "$work/elf32.s"
ld --no-warn-rwx-segments -m elf_i386 -N -Ttext=0x1000000 --section-start=.note.Xen=0x1003000 -e _start -o "$work/elf32-pvh" "$work/elf32.o"
strip -s "$work/elf32-pvh"
cp "$work/elf64-pvh" "$out/elf/seed-elf64-pvh"
cp "$work/elf64-plain" "$out/elf/seed-elf64-plain"
cp "$work/elf32-pvh" "$out/elf/seed-elf32-pvh"

# ---- Multiboot kernels (Multiboot Specification 0.6.96, 3.1) ------------------------------------
# a.out kludge (flag 16): header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
cat >"$work/mb-aout.s" <<'ASM'
    .text
    .globl _start
_start:
    .long 0x1BADB002, 0x00010003, -(0x1BADB002 + 0x00010003)
    .long _start, _start, _end_load, _end_bss, entry
entry:
    hlt
    jmp entry
_end_load:
    .set _end_bss, _end_load + 0x1000
ASM
as --32 -o "$work/mb-aout.o" "$work/mb-aout.s"
ld --no-warn-rwx-segments -m elf_i386 -N -Ttext=0x100000 -e _start --oformat=binary -o "$out/multiboot/seed-aout" "$work/mb-aout.o"
# ELF32 Multiboot kernel (no address fields: loaded through its program headers).
cat >"$work/mb-elf.s" <<'ASM'
    .text
    .globl _start
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)
_start:
    hlt
    jmp _start
    .bss
    .skip 0x1000
ASM
as --32 -o "$work/mb-elf.o" "$work/mb-elf.s"
ld --no-warn-rwx-segments -m elf_i386 -N -Ttext=0x100000 -e _start -o "$out/multiboot/seed-elf32" "$work/mb-elf.o"
strip -s "$out/multiboot/seed-elf32"

# ---- bzImage payloads and bzImages (Documentation/x86/boot.rst) ---------------------------------
# Non-gzip payloads carry the decompressed size as a 4-byte little-endian trailer (size_append).
size_append() { python3 -c 'import os,struct,sys; sys.stdout.buffer.write(struct.pack("<I", os.path.getsize(sys.argv[1])))' "$1"; }
vm=$work/elf64-plain
gzip -9 -n -c "$vm" >"$work/p-gzip"
{ xz --format=xz --check=crc32 --x86 --lzma2=dict=64KiB -c "$vm"; size_append "$vm"; } >"$work/p-xz"
{ zstd -q -19 -c "$vm"; size_append "$vm"; } >"$work/p-zstd"
{ bzip2 -9 -c "$vm"; size_append "$vm"; } >"$work/p-bzip2"
{ xz --format=lzma --lzma1=dict=64KiB -c "$vm"; size_append "$vm"; } >"$work/p-lzma"
cp "$vm" "$work/p-elf"
for p in gzip xz zstd bzip2 lzma elf; do cp "$work/p-$p" "$out/payload/seed-$p"; done

# bzImage: setup sectors with a protocol 2.15 setup header, then the payload (payload_offset 0).
make_bzimage() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
payload = open(sys.argv[1], "rb").read()
setup_sects = 1
f = bytearray((setup_sects + 1) * 512)
f[0x1F1] = setup_sects
struct.pack_into("<H", f, 0x1FE, 0xAA55)
f[0x200] = 0xEB; f[0x201] = 0x6A                    # jmp: header end 0x26C
struct.pack_into("<I", f, 0x202, 0x53726448)       # "HdrS"
struct.pack_into("<H", f, 0x206, 0x020F)           # protocol 2.15
f[0x211] = 0x01                                     # LOADED_HIGH
struct.pack_into("<I", f, 0x22C, 0x7FFFFFFF)       # initrd_addr_max
struct.pack_into("<I", f, 0x230, 0x200000)         # kernel_alignment
f[0x234] = 1                                        # relocatable_kernel
struct.pack_into("<H", f, 0x236, 0x5F)             # xloadflags: XLF_KERNEL_64 | ...
struct.pack_into("<I", f, 0x238, 0x7FF)            # cmdline_size
struct.pack_into("<I", f, 0x248, 0)                # payload_offset
struct.pack_into("<I", f, 0x24C, len(payload))     # payload_length
struct.pack_into("<Q", f, 0x258, 0x1000000)        # pref_address
struct.pack_into("<I", f, 0x260, 0x400000)         # init_size
open(sys.argv[2], "wb").write(bytes(f) + payload)
PY
}
for p in gzip xz zstd bzip2 lzma elf; do make_bzimage "$work/p-$p" "$out/bzimage/seed-$p"; done
# Near-valid: the setup header alone (truncated before the payload), and an old protocol (2.02).
head -c 624 "$out/bzimage/seed-gzip" >"$out/bzimage/seed-truncated-header"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[0x206:0x208]=(0x0202).to_bytes(2,"little"); open(sys.argv[2],"wb").write(b)' \
    "$out/bzimage/seed-truncated-header" "$out/bzimage/seed-old-protocol"

# The kernel target sees whatever --kernel is given: one of each kind.
cp "$out/bzimage/seed-xz" "$out/kernel/seed-bzimage-xz"
cp "$out/bzimage/seed-gzip" "$out/kernel/seed-bzimage-gzip"
cp "$out/elf/seed-elf64-pvh" "$out/kernel/seed-elf64-pvh"
cp "$out/multiboot/seed-aout" "$out/kernel/seed-multiboot-aout"
cp "$out/multiboot/seed-elf32" "$out/kernel/seed-multiboot-elf32"

# ---- qcow2 images (QEMU's docs/interop/qcow2.txt), 512-byte and 4 KiB clusters ------------------
q=$out/qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$q/seed-v2-empty" 64K
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=512 "$q/seed-v3-empty" 64K
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=512,refcount_bits=1 "$q/seed-v3-refcount1" 64K
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=512,refcount_bits=64 "$q/seed-v3-refcount64" 64K
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=4096 "$q/seed-v3-4k-empty" 1M
# Data, a zero cluster, a discarded range, a compressed cluster.
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=512 "$q/seed-v3-data" 64K
qemu-io -f qcow2 -c 'write -P 0xa5 0 2k' -c 'write -z 2k 512' -c 'write -P 0x5a 8k 1k' \
    -c 'discard 8k 512' -c 'write -c -P 0x11 16k 512' "$q/seed-v3-data" >/dev/null
# An internal snapshot: shared L2 tables and clusters (copied bit clear) to copy on write.
cp "$q/seed-v3-data" "$q/seed-v3-snapshot"
qemu-img snapshot -c snap "$q/seed-v3-snapshot"
qemu-io -f qcow2 -c 'write -P 0x77 0 512' "$q/seed-v3-snapshot" >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$q/seed-v2-data" 64K
qemu-io -f qcow2 -c 'write -P 0xa5 0 2k' -c 'write -c -P 0x11 16k 512' "$q/seed-v2-data" >/dev/null

chmod -x "$out"/*/seed-*
ls -l "$out"/*/seed-* | awk '{ printf "%6d %s\n", $5, $9 }'
