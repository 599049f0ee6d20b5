using System.Runtime.InteropServices;
using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Fpu;

/// <summary>The memory block an x87 stub works on; RDI points at it.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct X87Frame
{
    [FieldOffset(0)] public ushort Cw;
    [FieldOffset(2)] public ushort Sw;
    [FieldOffset(4)] public ushort SavedCw;
    [FieldOffset(16)] public Float80 In0;   // ST0 before the operation
    [FieldOffset(32)] public Float80 In1;   // ST1 before the operation
    [FieldOffset(48)] public Float80 Out0;  // ST0 after
    [FieldOffset(64)] public Float80 Out1;  // ST1 after
    [FieldOffset(80)] public ulong Mem;     // memory operand (m16/m32/m64/m80bcd)
    [FieldOffset(88)] public ushort MemHigh;

    public const byte CwOffset = 0, SwOffset = 2, SavedCwOffset = 4;
    public const byte In0Offset = 16, In1Offset = 32, Out0Offset = 48, Out1Offset = 64, MemOffset = 80;
}

/// <summary>
/// Builds and runs host x87 stubs: save FCW, FNCLEX, FLDCW, load the inputs (In1 first so In0 is ST0),
/// run the instruction bytes, FNSTSW (before anything can change the flags), FNCLEX (so that unmasked
/// exceptions never fault on the following stores), pop the outputs, FNINIT (an empty stack, as the
/// SysV ABI requires, even when the instruction pushed less than expected), restore FCW, RET.
/// Keep IM masked in the tested FCW: popping an empty register is a masked stack fault then.
/// </summary>
internal sealed unsafe class X87Host : IDisposable
{
    private readonly NativeCode _code;

    public X87Host(int inputs, ReadOnlySpan<byte> instruction, int outputs)
    {
        var c = new List<byte>();
        c.AddRange([0xD9, 0x7F, X87Frame.SavedCwOffset]); // fnstcw [rdi+SavedCw]
        c.AddRange([0xDB, 0xE2]);                          // fnclex
        c.AddRange([0xD9, 0x6F, X87Frame.CwOffset]);      // fldcw [rdi+Cw]
        if (inputs >= 2)
            c.AddRange([0xDB, 0x6F, X87Frame.In1Offset]); // fld tbyte [rdi+In1]
        if (inputs >= 1)
            c.AddRange([0xDB, 0x6F, X87Frame.In0Offset]); // fld tbyte [rdi+In0]
        c.AddRange(instruction);
        c.AddRange([0xDF, 0xE0]);                          // fnstsw ax
        c.AddRange([0x66, 0x89, 0x47, X87Frame.SwOffset]); // mov [rdi+Sw], ax
        c.AddRange([0xDB, 0xE2]);                          // fnclex
        if (outputs >= 1)
            c.AddRange([0xDB, 0x7F, X87Frame.Out0Offset]); // fstp tbyte [rdi+Out0]
        if (outputs >= 2)
            c.AddRange([0xDB, 0x7F, X87Frame.Out1Offset]); // fstp tbyte [rdi+Out1]
        c.AddRange([0xDB, 0xE3]);                          // fninit: empty stack whatever the instruction pushed or popped
        c.AddRange([0xD9, 0x6F, X87Frame.SavedCwOffset]); // fldcw [rdi+SavedCw]
        c.Add(0xC3);                                       // ret
        _code = new NativeCode(c.ToArray());
    }

    /// <summary>ModRM byte for [rdi+disp8] with the given /digit.</summary>
    public static byte RdiDisp8(int digit) => (byte)(0x47 | (digit << 3));

    public void Run(ref X87Frame frame)
    {
        fixed (X87Frame* p = &frame)
            _code.Invoke(p);
    }

    public void Dispose() => _code.Dispose();
}
