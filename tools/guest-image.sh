#!/usr/bin/env bash
# Prepares SharpVisor's default guest: Debian's stock kernel (linux-image-amd64) and a busybox
# initramfs carrying the kernel's virtio and ext4 modules, and e2fsprogs (mkfs.ext4, e2fsck) with the
# shared libraries they need. Everything is fetched with
# `apt-get download` (no root install) into a cache; a second call only prints the paths.
#
# Usage: tools/guest-image.sh [--print]      prints "KERNEL INITRD" (space-separated) on stdout
# Cache: ${SHARPVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharpvisor}/guest/image-<kernel-package>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

cache=${SHARPVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharpvisor}
mkdir -p "$cache/guest"

# The kernel package linux-image-amd64 currently points at (needs a fresh package list).
resolve_kernel_package() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
    if [[ -z "$pkg" ]]; then
        apt_update_once
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
    fi
    [[ -n "$pkg" ]] || die "cannot find Debian's linux-image-amd64 package (is this a Debian machine with apt sources?)"
    echo "$pkg"
}

apt_update_once() {
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    step "updating the Debian package lists"
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
}

# An existing complete image wins: no network is needed once the cache is filled.
existing=$(ls -d "$cache"/guest/image-linux-image-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
# Bump when the image's contents change, so caches from older scripts are rebuilt.
image_version=4
if [[ -n "$existing" && "$(cat "$existing/image-version" 2>/dev/null)" == "$image_version" ]]; then
    echo "$existing/vmlinuz $existing/initramfs.cpio.gz"
    exit 0
fi

apt_install cpio gzip
pkg=$(resolve_kernel_package)
dir="$cache/guest/image-$pkg"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# e2fsprogs is dynamically linked: its libraries and the C library come along.
e2fs_pkgs=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libc6)
step "downloading $pkg, busybox-static and e2fsprogs (first run only)"
( cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static "${e2fs_pkgs[@]}" >&2 ) \
    || die "apt-get download of $pkg busybox-static ${e2fs_pkgs[*]} failed"

step "unpacking"
mkdir -p "$work/kernel" "$work/busybox"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
for p in "${e2fs_pkgs[@]}"; do
    dpkg-deb -x "$work/${p}"_*.deb "$work/userland" || die "cannot unpack $p"
done
kver=${pkg#linux-image-}
mods="$work/kernel/lib/modules/$kver/kernel"
[[ -d "$mods" ]] || die "unexpected layout of $pkg: no lib/modules/$kver"

step "building the busybox initramfs"
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
# e2fsprogs: the tools (with their mkfs.ext4/fsck.ext4 names), mke2fs.conf, and the shared objects
# they load (ld.so, libc, libext2fs, libe2p, libcom_err, libblkid, libuuid).
ul="$work/userland"
mkdir -p "$root/sbin" "$root/lib/x86_64-linux-gnu" "$root/lib64"
cp -a "$ul"/sbin/{mke2fs,mkfs.ext4,e2fsck,fsck.ext4} "$root/sbin/" || die "e2fsprogs: unexpected layout"
cp "$ul/etc/mke2fs.conf" "$root/etc/"
for lib in ld-linux-x86-64.so.2 libc.so.6 libext2fs.so.2 libe2p.so.2 libcom_err.so.2 libblkid.so.1 libuuid.so.1; do
    # Some packages ship under /lib, others under /usr/lib; the guest has them all in /lib.
    src=$(find "$ul" -name "$lib" | head -n1)
    [[ -n "$src" ]] || die "e2fsprogs: $lib missing from ${e2fs_pkgs[*]}"
    cp -L "$src" "$root/lib/x86_64-linux-gnu/$lib"
done
ln -sf ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
# Modules in dependency order (modules.dep is made by depmod at install time, which we skip).
order=(drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
       drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
       net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/char/virtio_console
       drivers/char/hw_random/virtio-rng lib/crc16 fs/mbcache fs/jbd2/jbd2 crypto/crc32c_generic
       lib/libcrc32c fs/ext4/ext4)
: >"$root/lib/modules/load-order"
for m in "${order[@]}"; do
    cp "$mods/$m.ko" "$root/lib/modules/" || die "module $m.ko missing from $pkg"
    echo "$(basename "$m").ko" >>"$root/lib/modules/load-order"
done
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </lib/modules/load-order
# With console=hvc0 the console only exists once virtio_console is loaded: reopen it now, if it opens.
if (exec </dev/console) 2>/dev/null; then exec </dev/console >/dev/console 2>&1; fi
# Test images add /test/run (tools and tests append a cpio layer); it runs instead of the shell.
[ -x /test/run ] && exec /test/run
echo "SharpVisor guest: Linux $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s). 'poweroff' ends the VM."
# busybox init as PID 1, so that `poweroff` and `reboot` work (they signal init).
exec /bin/init
INIT
chmod +x "$root/init"
cat >"$root/etc/inittab" <<'TAB'
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
TAB
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"

mkdir -p "$dir.partial"
cp "$work/kernel/boot/vmlinuz-$kver" "$dir.partial/vmlinuz"
cp "$work/kernel/boot/config-$kver" "$dir.partial/config"
cp "$work/busybox/bin/busybox" "$dir.partial/busybox"   # the same binary, for host-side comparisons in tests
echo "$image_version" >"$dir.partial/image-version"
( cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9 ) >"$dir.partial/initramfs.cpio.gz"
rm -rf "$dir"
mv "$dir.partial" "$dir"
echo "$dir/vmlinuz $dir/initramfs.cpio.gz"
