using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

/// <summary>
/// Host machine code as a callable function: the bytes go into a private anonymous mapping that is
/// made executable (written while read-write, then flipped to read-execute), and the mapping is
/// freed on Dispose. Used by differential tests that run real x86 instructions as the oracle.
/// The code follows the System V AMD64 ABI: first argument in RDI, caller-saved registers only.
/// </summary>
internal sealed unsafe partial class NativeCode : IDisposable
{
    private const int ProtRead = 1, ProtWrite = 2, ProtExec = 4;
    private const int MapPrivate = 0x02, MapAnonymous = 0x20;

    private nint _address;
    private readonly nuint _length;

    public NativeCode(ReadOnlySpan<byte> code)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new PlatformNotSupportedException("NativeCode needs Linux on x86-64.");
        _length = (nuint)((code.Length + 4095) & ~4095);
        nint address = Mmap(0, _length, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (address == -1)
            throw new InvalidOperationException($"mmap failed: errno {Marshal.GetLastPInvokeError()}");
        code.CopyTo(new Span<byte>((void*)address, code.Length));
        if (Mprotect(address, _length, ProtRead | ProtExec) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            Munmap(address, _length);
            throw new InvalidOperationException($"mprotect failed: errno {errno}");
        }
        _address = address;
    }

    public static bool IsSupported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    /// <summary>The code as a <c>void f(void* arg)</c>.</summary>
    public delegate* unmanaged<void*, void> Function
    {
        get
        {
            ObjectDisposedException.ThrowIf(_address == 0, this);
            return (delegate* unmanaged<void*, void>)_address;
        }
    }

    public void Invoke(void* argument) => Function(argument);

    public void Dispose()
    {
        if (_address != 0)
        {
            Munmap(_address, _length);
            _address = 0;
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(nint address, nuint length);
}
