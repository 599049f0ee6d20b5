using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// One software-TLB entry (QEMU softmmu style): a tag per access kind holds the 4 KiB-aligned
/// linear page when that kind of access may take the fast path, and <see cref="HostAddend"/> turns
/// a linear address in the page into a host pointer. Tags hold <see cref="Invalid"/> (an unaligned
/// value no page address equals) when the kind of access must take the slow path — not mapped,
/// not permitted, MMIO, or (for writes) the dirty bit not yet set.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public struct TlbEntry
{
    public const ulong Invalid = 1;
    public ulong ReadTag;
    public ulong WriteTag;
    public ulong ExecTag;
    /// <summary>host pointer = HostAddend + linear address.</summary>
    public long HostAddend;
    /// <summary>Host offset of the page in guest RAM (code tracking uses it).</summary>
    public ulong RamOffset;
    /// <summary>Translated through a global (CR4.PGE) mapping: survives CR3 writes.</summary>
    public bool Global;
}
