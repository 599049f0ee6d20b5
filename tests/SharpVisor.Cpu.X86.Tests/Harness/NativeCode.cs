using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// A page of host memory that is readable, writable and executable: the place where instruction
/// bytes run natively, as the oracle for the interpreter. Linux x86-64 only (the project's host).
/// </summary>
public sealed unsafe partial class NativeCode : IDisposable
{
    const int PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc")]
    private static partial int munmap(nint addr, nuint length);

    public NativeCode(int size)
    {
        Size = (size + 4095) & ~4095;
        nint p = mmap(0, (nuint)Size, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == -1)
        {
            throw new InvalidOperationException($"mmap of executable memory failed (errno {Marshal.GetLastPInvokeError()})");
        }
        Address = (byte*)p;
    }

    public byte* Address { get; }
    public int Size { get; }
    public Span<byte> Bytes => new(Address, Size);

    /// <summary>Calls the code at <paramref name="offset"/> as a SysV function taking one pointer argument.</summary>
    public void Call(int offset, void* argument) => ((delegate* unmanaged<void*, void>)(Address + offset))(argument);

    public void Dispose() => _ = munmap((nint)Address, (nuint)Size);
}
