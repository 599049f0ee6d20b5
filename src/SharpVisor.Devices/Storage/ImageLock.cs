using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using SharpVisor.Core;

namespace SharpVisor.Devices.Storage;

/// <summary>
/// Image locking compatible with QEMU's (block/file-posix.c, "locking=auto|on|off"), so that two
/// SharpVisor processes, or SharpVisor and a QEMU process, never write one image at once.
///
/// QEMU's protocol: every user of an image file holds shared (read) open-file-description locks on
/// single bytes — byte 100 + p for each permission p it uses, byte 200 + p for each permission it does
/// not allow others — and before going ahead tests, with an exclusive probe, that nobody else holds
/// byte 200 + p for a permission it uses nor byte 100 + p for one it refuses to share. The permissions
/// are QEMU's BLK_PERM bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize. What a SharpVisor
/// disk takes is what a QEMU guest disk (share-rw=off) on the same image takes: it reads, writes unless
/// read-only, and lets nobody else write; a qcow2 file's metadata must also not change under it, so a
/// qcow2 image also uses and refuses to share "resize" (QEMU's bdrv_default_perms_for_storage). The
/// bytes match what /proc/locks shows for qemu-io 7.2 on a qcow2 image: 100, 101, 103, 201, 203 read-write,
/// 100, 201, 203 read-only.
///
/// OFD locks (F_OFD_SETLK) belong to the open file description: they go away when the file is closed,
/// also when the process dies, and two opens inside one process conflict like two processes do. The
/// images drop them with <see cref="Release"/> before they close the file.
/// </summary>
static partial class ImageLock
{
    // QEMU's lock byte bases (block/file-posix.c RAW_LOCK_PERM_BASE / RAW_LOCK_SHARED_BASE).
    const long UsesBase = 100, RefusesBase = 200;

    // QEMU's BLK_PERM bits (include/block/block-common.h).
    const int ConsistentRead = 1 << 0, Write = 1 << 1, Resize = 1 << 3;
    const int PermissionCount = 4;

    // Linux, x86-64 and arm64 alike (asm-generic/fcntl.h).
    const int F_OFD_GETLK = 36, F_OFD_SETLK = 37;
    const short F_RDLCK = 0, F_WRLCK = 1, F_UNLCK = 2;
    const short SEEK_SET = 0;
    const int EACCES = 13, EAGAIN = 11;

    /// <summary>struct flock as glibc lays it out on 64-bit Linux (32 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct Flock
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int FcntlLock(SafeFileHandle fd, int command, ref Flock lockInfo);

    /// <summary>
    /// Takes the locks for using <paramref name="file"/> as a disk. Another user holding a conflicting
    /// lock is a one-line <see cref="UserErrorException"/> (the caller then releases the locks taken so
    /// far and closes the file). Where the host has no OFD locks (not Linux, or a file system without them)
    /// it warns once and goes on unlocked, as QEMU's locking=auto does.
    /// </summary>
    public static void Acquire(SafeFileHandle file, string path, bool readOnly, bool isQcow2, Log log)
    {
        if (!OperatingSystem.IsLinux())
        {
            log.Once("storage.lock.unsupported", "storage", "image locking needs Linux OFD locks; images are not locked");
            return;
        }
        int uses = ConsistentRead | (readOnly ? 0 : Write) | (isQcow2 && !readOnly ? Resize : 0);
        int refuses = Write | (isQcow2 ? Resize : 0);

        // First announce ours (so that whoever probes after us sees them), then probe for theirs.
        for (int p = 0; p < PermissionCount; p++)
        {
            bool used = (uses & (1 << p)) != 0, refused = (refuses & (1 << p)) != 0;
            if ((used && !Lock(file, path, UsesBase + p, log)) || (refused && !Lock(file, path, RefusesBase + p, log)))
            {
                Release(file); // the host cannot lock this file (warned): hold none rather than some
                return;
            }
        }
        for (int p = 0; p < PermissionCount; p++)
        {
            if ((uses & (1 << p)) != 0 && HeldByOthers(file, RefusesBase + p))
            {
                throw Locked(path, $"it does not allow others to {Verb(p)}");
            }
            if ((refuses & (1 << p)) != 0 && HeldByOthers(file, UsesBase + p))
            {
                throw Locked(path, $"it has the image open to {Verb(p)}");
            }
        }
    }

    /// <summary>
    /// Drops every lock on <paramref name="file"/> (none held: nothing happens); call it just before closing.
    /// Closing alone drops them only once no descriptor refers to the open file description any more, and
    /// a child process being forked by any thread holds a copy until its exec: meanwhile our locks would
    /// still refuse the next open of the image.
    /// </summary>
    public static void Release(SafeFileHandle file)
    {
        if (OperatingSystem.IsLinux() && !file.IsClosed)
        {
            var l = new Flock { Type = F_UNLCK, Whence = SEEK_SET, Start = UsesBase, Length = RefusesBase + PermissionCount - UsesBase };
            FcntlLock(file, F_OFD_SETLK, ref l);
        }
    }

    static string Verb(int permission) => permission switch
    {
        0 => "read",
        1 => "write",
        2 => "write (unchanged)",
        _ => "resize",
    };

    static UserErrorException Locked(string path, string why) =>
        new($"disk image '{path}' is locked by another process ({why}); is another VM using it? Add locking=off to --disk to override");

    /// <summary>Takes a shared lock on one byte; false when the host cannot lock (warned once).</summary>
    static bool Lock(SafeFileHandle file, string path, long at, Log log)
    {
        var l = new Flock { Type = F_RDLCK, Whence = SEEK_SET, Start = at, Length = 1 };
        if (FcntlLock(file, F_OFD_SETLK, ref l) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno is EAGAIN or EACCES)
        {
            // Only an exclusive lock blocks a shared one; QEMU takes those just for an instant to probe.
            throw Locked(path, "it holds an exclusive lock");
        }
        log.Once($"storage.lock.{path}", "storage", $"cannot lock disk image '{path}' ({Marshal.GetPInvokeErrorMessage(errno)}); it is used unlocked");
        return false;
    }

    /// <summary>True when another open file description holds a lock on the byte (F_OFD_GETLK with an exclusive probe).</summary>
    static bool HeldByOthers(SafeFileHandle file, long at)
    {
        var l = new Flock { Type = F_WRLCK, Whence = SEEK_SET, Start = at, Length = 1 };
        return FcntlLock(file, F_OFD_GETLK, ref l) == 0 && l.Type != F_UNLCK;
    }
}
