using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpVisor.Core;

/// <summary>
/// Guest RAM: one anonymous host mapping that backs every RAM byte of the guest-physical address
/// space. Guest-physical addresses map to host offsets through two ranges, as on a q35 PC:
/// [0, LowRamEnd) directly, and [4 GiB, 4 GiB + HighRamSize) after it (the gap is the PCI hole).
/// </summary>
/// <remarks>
/// Besides the bytes, it keeps one generation counter per 4 KiB page for code caching: a CPU that
/// decodes instructions from a page marks it (<see cref="MarkCode"/>) and remembers its generation;
/// every write path (CPU slow path, DMA, loaders) calls <see cref="NoteWrite"/>, which bumps the
/// generation of a marked page so stale decoded blocks are dropped at their next lookup.
/// </remarks>
public sealed unsafe class GuestMemory : IDisposable
{
    public const ulong PageSize = 4096;
    public const int PageShift = 12;
    public const ulong FourGiB = 0x1_0000_0000;

    /// <summary>Largest RAM placed below 4 GiB; larger guests get 2 GiB low and the rest high (as QEMU q35).</summary>
    public const ulong MaxLowRam = 0xB000_0000;
    public const ulong LowRamWhenSplit = 0x8000_0000;

    readonly byte* _base;
    readonly ulong _size;
    readonly byte[] _codePage;     // 1 when some CPU holds decoded code from this page
    readonly uint[] _pageGeneration; // bumped on every write to a code page
    bool _disposed;

    public GuestMemory(ulong sizeBytes)
    {
        if (sizeBytes < 1024 * 1024 || sizeBytes % PageSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), "guest RAM must be at least 1 MiB and a multiple of 4 KiB");
        }
        _size = sizeBytes;
        LowRamEnd = sizeBytes <= MaxLowRam ? sizeBytes : LowRamWhenSplit;
        HighRamSize = sizeBytes - LowRamEnd;
        _base = (byte*)HostMemory.MapAnonymous(sizeBytes);
        ulong pages = sizeBytes >> PageShift;
        _codePage = GC.AllocateArray<byte>((int)pages, pinned: true); // translated code reads it through CodePageMap
        _pageGeneration = new uint[pages];
    }

    public ulong Size => _size;
    public ulong LowRamEnd { get; }
    public ulong HighRamSize { get; }
    public ulong HighRamEnd => FourGiB + HighRamSize;

    /// <summary>Host pointer to the first RAM byte (host offset 0).</summary>
    public byte* HostBase => _base;

    /// <summary>The code-page map <see cref="IsCodePage"/> reads, one byte per RAM page (nonzero: some
    /// vCPU holds decoded code from it), for translated code; pinned, so valid while this lives.</summary>
    public byte* CodePageMap => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_codePage));

    /// <summary>Host offset of a guest-physical address, or -1 when it is not RAM.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long HostOffset(ulong gpa)
    {
        if (gpa < LowRamEnd)
        {
            return (long)gpa;
        }
        ulong high = gpa - FourGiB;
        return high < HighRamSize ? (long)(LowRamEnd + high) : -1;
    }

    public bool IsRam(ulong gpa) => HostOffset(gpa) >= 0;

    /// <summary>True when [gpa, gpa+length) is RAM in one contiguous host range.</summary>
    public bool IsRamRange(ulong gpa, ulong length)
    {
        if (length == 0)
        {
            return IsRam(gpa);
        }
        if (gpa + length < gpa)
        {
            return false;
        }
        return (gpa + length <= LowRamEnd) || (gpa >= FourGiB && gpa + length - FourGiB <= HighRamSize);
    }

    /// <summary>A span over guest RAM; throws when the range is not wholly RAM (a VMM bug: check first).</summary>
    public Span<byte> GetSpan(ulong gpa, int length)
    {
        if (length < 0 || !IsRamRange(gpa, (ulong)length))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(gpa), $"0x{gpa:x}+0x{length:x} is not guest RAM");
        }
        return new Span<byte>(_base + HostOffset(gpa), length);
    }

    /// <summary>Copies from guest RAM; false (nothing copied) when any byte is outside RAM.</summary>
    public bool TryRead(ulong gpa, Span<byte> destination)
    {
        if (!IsRamRange(gpa, (ulong)destination.Length))
        {
            return false;
        }
        new ReadOnlySpan<byte>(_base + HostOffset(gpa), destination.Length).CopyTo(destination);
        return true;
    }

    /// <summary>Copies into guest RAM, invalidating cached code; false (nothing written) when outside RAM.</summary>
    public bool TryWrite(ulong gpa, ReadOnlySpan<byte> source)
    {
        if (!IsRamRange(gpa, (ulong)source.Length))
        {
            return false;
        }
        long off = HostOffset(gpa);
        NoteWrite((ulong)off, (ulong)source.Length);
        source.CopyTo(new Span<byte>(_base + off, source.Length));
        return true;
    }

    public ulong ReadU64(ulong gpa) { Span<byte> b = stackalloc byte[8]; return TryRead(gpa, b) ? BitConverter.ToUInt64(b) : ulong.MaxValue; }
    public uint ReadU32(ulong gpa) { Span<byte> b = stackalloc byte[4]; return TryRead(gpa, b) ? BitConverter.ToUInt32(b) : uint.MaxValue; }
    public bool WriteU64(ulong gpa, ulong v) => TryWrite(gpa, BitConverter.GetBytes(v));
    public bool WriteU32(ulong gpa, uint v) => TryWrite(gpa, BitConverter.GetBytes(v));

    // ---- code tracking (self-modifying code, DMA into code) ----

    /// <summary>Marks the page at a host offset as holding decoded code and returns its generation.</summary>
    public uint MarkCode(ulong hostOffset)
    {
        ulong page = hostOffset >> PageShift;
        // A full fence orders the mark before the caller reads the bytes it decodes (see class remarks).
        Volatile.Write(ref _codePage[page], 1);
        Interlocked.MemoryBarrier();
        return Volatile.Read(ref _pageGeneration[page]);
    }

    /// <summary>Current generation of the page at a host offset.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint Generation(ulong hostOffset) => Volatile.Read(ref _pageGeneration[hostOffset >> PageShift]);

    /// <summary>
    /// How many times a page holding decoded code was written, in all of RAM: a vCPU that remembers
    /// which block followed which (<c>Block.Link0</c>) trusts that only while this is unchanged —
    /// one read instead of a generation check per block.
    /// </summary>
    public long CodeWrites => Volatile.Read(ref _codeWrites);
    long _codeWrites;

    /// <summary>True when the page at a host offset holds decoded code.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool IsCodePage(ulong hostOffset) => _codePage[hostOffset >> PageShift] != 0;

    /// <summary>Must be called before (or as) bytes at [hostOffset, +length) change: drops decoded code there.</summary>
    /// <returns>True when some code page was invalidated.</returns>
    public bool NoteWrite(ulong hostOffset, ulong length)
    {
        if (length == 0)
        {
            return false;
        }
        bool any = false;
        ulong last = (hostOffset + length - 1) >> PageShift;
        for (ulong p = hostOffset >> PageShift; p <= last; p++)
        {
            if (_codePage[p] != 0)
            {
                _codePage[p] = 0;
                Interlocked.Increment(ref _pageGeneration[p]);
                Interlocked.Increment(ref _codeWrites);
                any = true;
            }
        }
        return any;
    }

    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            HostMemory.Unmap(_base, _size);
        }
    }
}

/// <summary>Anonymous host mappings: pages come zeroed and are only backed when touched.</summary>
internal static unsafe partial class HostMemory
{
    const int PROT_READ = 1, PROT_WRITE = 2, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    public static void* MapAnonymous(ulong size)
    {
        nint p = mmap(0, (nuint)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == -1)
        {
            throw new OutOfMemoryException($"cannot map {size >> 20} MiB of guest RAM (errno {Marshal.GetLastPInvokeError()})");
        }
        return (void*)p;
    }

    public static void Unmap(void* p, ulong size) => _ = munmap((nint)p, (nuint)size);
}
