using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// Host memory in which instruction bytes run natively, as the oracle for the interpreter (Linux
/// x86-64 only, the project's host). Two kinds: a read-write-execute area the caller fills and
/// refills (<see cref="NativeCode(int)"/>: the differential runner's stubs, data and stack), or a
/// fixed function written once and then made read-execute (<see cref="NativeCode(ReadOnlySpan{byte})"/>:
/// the x87 oracle stubs). Code follows the System V AMD64 ABI: one pointer argument in RDI.
/// </summary>
public sealed unsafe partial class NativeCode : IDisposable
{
    const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapShared = 1, MapPrivate = 2, MapAnonymous = 0x20, MapFixedNoReplace = 0x100000;

    nint _address;
    readonly nuint _length;

    /// <summary>
    /// A zeroed read-write-execute area of at least <paramref name="size"/> bytes; with
    /// <paramref name="shared"/>, writes by a forked child are seen by this process (MAP_SHARED).
    /// </summary>
    public NativeCode(int size, bool shared = false)
    {
        _length = Round(size);
        _address = Map(_length, ProtRead | ProtWrite | ProtExec, shared ? MapShared : MapPrivate);
    }

    /// <summary>
    /// A zeroed read-write area of <paramref name="size"/> bytes at exactly <paramref name="address"/>
    /// (for data the instruction under test must reach with 32-bit addresses), or an
    /// InvalidOperationException when that range is taken.
    /// </summary>
    public NativeCode(ulong address, int size)
    {
        _length = Round(size);
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("NativeCode needs Linux on x86-64.");
        }
        nint p = Mmap((nint)address, _length, ProtRead | ProtWrite, MapPrivate | MapAnonymous | MapFixedNoReplace, -1, 0);
        if (p != (nint)address)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (p != -1)
            {
                _ = Munmap(p, _length); // an old kernel ignoring MAP_FIXED_NOREPLACE put it elsewhere
            }
            throw new InvalidOperationException($"mmap at 0x{address:x} failed: errno {errno}");
        }
        _address = p;
    }

    /// <summary>A function holding <paramref name="code"/>: written while read-write, then switched to read-execute.</summary>
    public NativeCode(ReadOnlySpan<byte> code)
    {
        _length = Round(code.Length);
        nint address = Map(_length, ProtRead | ProtWrite, MapPrivate);
        code.CopyTo(new Span<byte>((void*)address, code.Length));
        if (Mprotect(address, _length, ProtRead | ProtExec) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = Munmap(address, _length);
            throw new InvalidOperationException($"mprotect failed: errno {errno}");
        }
        _address = address;
    }

    public static bool IsSupported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    static nuint Round(int size) => (nuint)((size + 4095) & ~4095);

    static nint Map(nuint length, int protection, int sharing)
    {
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("NativeCode needs Linux on x86-64.");
        }
        nint p = Mmap(0, length, protection, sharing | MapAnonymous, -1, 0);
        if (p == -1)
        {
            throw new InvalidOperationException($"mmap failed: errno {Marshal.GetLastPInvokeError()}");
        }
        return p;
    }

    public byte* Address
    {
        get
        {
            ObjectDisposedException.ThrowIf(_address == 0, this);
            return (byte*)_address;
        }
    }

    public int Size => (int)_length;

    /// <summary>The area as bytes (writable only for the read-write-execute kind).</summary>
    public Span<byte> Bytes => new(Address, Size);

    /// <summary>Calls the code at <paramref name="offset"/> as <c>void f(void* argument)</c>.</summary>
    public void Call(int offset, void* argument) => ((delegate* unmanaged<void*, void>)(Address + offset))(argument);

    /// <summary>Calls the code at the start of the area.</summary>
    public void Invoke(void* argument) => Call(0, argument);

    public void Dispose()
    {
        if (_address != 0)
        {
            _ = Munmap(_address, _length);
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
