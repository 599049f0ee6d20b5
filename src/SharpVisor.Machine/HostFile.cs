using System.Runtime.InteropServices;

namespace SharpVisor.Machine;

/// <summary>What a path names on the host.</summary>
public enum HostFileKind { Missing, Regular, Directory, CharacterDevice, BlockDevice, Fifo, Socket, Other }

/// <summary>A path's kind and size, as stat(2) sees it (symbolic links followed).</summary>
public readonly record struct HostFileInfo(HostFileKind Kind, long Size);

/// <summary>
/// Looks at a path without opening it. Opening is not harmless: opening a FIFO for reading blocks
/// until a writer comes, and a character device such as /dev/zero reads forever. .NET's FileInfo
/// reports neither (a FIFO is a 0-byte "normal" file), so this asks the kernel with statx(2),
/// whose result layout is the same on every architecture.
/// </summary>
public static unsafe partial class HostFile
{
    const int AtFdCwd = -100;
    const uint StatxType = 0x1, StatxSize = 0x200;
    const int StatxBufferSize = 256;  // sizeof(struct statx)
    const int ModeOffset = 0x1C, SizeOffset = 0x28;  // stx_mode (u16) and stx_size (u64) in linux/stat.h
    const int Enoent = 2, Enotdir = 20;

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, byte* buffer);

    /// <summary>The kind and size of <paramref name="path"/>; <see cref="HostFileKind.Missing"/> when nothing is there.</summary>
    /// <exception cref="IOException">The path cannot be examined (permission denied, a name too long...).</exception>
    public static HostFileInfo Stat(string path)
    {
        byte* buffer = stackalloc byte[StatxBufferSize];
        if (Statx(AtFdCwd, path, 0, StatxType | StatxSize, buffer) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is Enoent or Enotdir)
            {
                return new HostFileInfo(HostFileKind.Missing, 0);
            }
            throw new IOException(Marshal.GetPInvokeErrorMessage(errno));
        }
        var stat = new ReadOnlySpan<byte>(buffer, StatxBufferSize);
        int mode = MemoryMarshal.Read<ushort>(stat[ModeOffset..]);
        long size = (long)Math.Min(MemoryMarshal.Read<ulong>(stat[SizeOffset..]), long.MaxValue);
        // File type bits of st_mode (inode(7), S_IFMT).
        var kind = (mode & 0xF000) switch
        {
            0x8000 => HostFileKind.Regular,
            0x4000 => HostFileKind.Directory,
            0x2000 => HostFileKind.CharacterDevice,
            0x6000 => HostFileKind.BlockDevice,
            0x1000 => HostFileKind.Fifo,
            0xC000 => HostFileKind.Socket,
            _ => HostFileKind.Other,
        };
        return new HostFileInfo(kind, size);
    }

    /// <summary>"a FIFO", "a directory"...: for messages.</summary>
    public static string Describe(HostFileKind kind) => kind switch
    {
        HostFileKind.Regular => "a regular file",
        HostFileKind.Directory => "a directory",
        HostFileKind.CharacterDevice => "a character device",
        HostFileKind.BlockDevice => "a block device",
        HostFileKind.Fifo => "a FIFO",
        HostFileKind.Socket => "a socket",
        HostFileKind.Missing => "missing",
        _ => "not a regular file",
    };
}
