using System.Runtime.CompilerServices;

namespace SharpVisor.Cpu.X86.Decode;

/// <summary>
/// An operand width as a type, so one generic handler source compiles (the JIT specialises
/// generic methods over struct type arguments) into four width-specific handlers with no run-time
/// switch: <c>&amp;Alu.AddRR&lt;S32&gt;</c>.
/// </summary>
public interface IOpSize
{
    static abstract int Bits { get; }
    static abstract ulong Mask { get; }
    static abstract ulong GetReg(Cpu c, int r);
    /// <summary>Writes a register with the architectural merge rules (32-bit writes zero bits 63:32).</summary>
    static abstract void SetReg(Cpu c, int r, ulong v);
    static abstract ulong Load(Cpu c, ulong la);
    static abstract void Store(Cpu c, ulong la, ulong v);
    /// <summary>Atomic compare-exchange on host memory (LOCKed read-modify-write); returns the old value.</summary>
    static abstract unsafe ulong CompareExchange(byte* p, ulong value, ulong comparand);
    static abstract unsafe ulong LoadHost(byte* p);
}

public readonly struct S8 : IOpSize
{
    public static int Bits => 8;
    public static ulong Mask => 0xFF;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong GetReg(Cpu c, int r) => c.GetReg8(r);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void SetReg(Cpu c, int r, ulong v) => c.SetReg8(r, (byte)v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong Load(Cpu c, ulong la) => c.Read8(la);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Cpu c, ulong la, ulong v) => c.Write8(la, (byte)v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong CompareExchange(byte* p, ulong value, ulong comparand) => Interlocked.CompareExchange(ref *(byte*)p, (byte)value, (byte)comparand);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong LoadHost(byte* p) => Volatile.Read(ref *(byte*)p);
}

public readonly unsafe struct S16 : IOpSize
{
    public static int Bits => 16;
    public static ulong Mask => 0xFFFF;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong GetReg(Cpu c, int r) => (ushort)c.Regs.Gpr[r];
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void SetReg(Cpu c, int r, ulong v) { ref ulong g = ref c.Regs.Gpr[r]; g = (g & ~0xFFFFUL) | (ushort)v; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong Load(Cpu c, ulong la) => c.Read16(la);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Cpu c, ulong la, ulong v) => c.Write16(la, (ushort)v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong CompareExchange(byte* p, ulong value, ulong comparand) => Interlocked.CompareExchange(ref *(ushort*)p, (ushort)value, (ushort)comparand);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong LoadHost(byte* p) => Volatile.Read(ref *(ushort*)p);
}

public readonly unsafe struct S32 : IOpSize
{
    public static int Bits => 32;
    public static ulong Mask => 0xFFFF_FFFF;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong GetReg(Cpu c, int r) => (uint)c.Regs.Gpr[r];
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void SetReg(Cpu c, int r, ulong v) => c.Regs.Gpr[r] = (uint)v;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong Load(Cpu c, ulong la) => c.Read32(la);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Cpu c, ulong la, ulong v) => c.Write32(la, (uint)v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong CompareExchange(byte* p, ulong value, ulong comparand) => Interlocked.CompareExchange(ref *(uint*)p, (uint)value, (uint)comparand);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong LoadHost(byte* p) => Volatile.Read(ref *(uint*)p);
}

public readonly unsafe struct S64 : IOpSize
{
    public static int Bits => 64;
    public static ulong Mask => ulong.MaxValue;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong GetReg(Cpu c, int r) => c.Regs.Gpr[r];
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void SetReg(Cpu c, int r, ulong v) => c.Regs.Gpr[r] = v;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ulong Load(Cpu c, ulong la) => c.Read64(la);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Cpu c, ulong la, ulong v) => c.Write64(la, v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong CompareExchange(byte* p, ulong value, ulong comparand) => Interlocked.CompareExchange(ref *(ulong*)p, (ulong)value, (ulong)comparand);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ulong LoadHost(byte* p) => Volatile.Read(ref *(ulong*)p);
}
