using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>
/// The FSTENV/FSAVE layouts the host cannot show from 64-bit mode: the real-mode ones (SDM Vol. 1
/// figures 8-10 and 8-12: pointers as linear addresses, the opcode next to FIP's upper bits) and
/// the 32-bit protected-mode ones on a 32-bit vCPU.
/// </summary>
public sealed unsafe class X87EnvironmentLayoutTests
{
    static FpuState State()
    {
        var f = new FpuState();
        f.Control = 0x027F;
        f.Status = 0x3A21;
        f.Tag = 0x0FFF;
        f.LastCs = 0x1234;
        f.LastIp = 0x5678;
        f.LastDs = 0x9ABC;
        f.LastDp = 0xDEF0;
        f.LastOpcode = 0x5D3;
        return f;
    }

    [Fact]
    public void RealMode32BitLayoutStoresLinearPointersAndTheOpcode()
    {
        Span<byte> img = stackalloc byte[28];
        X87Environment.Build(State(), size32: true, realLayout: true, img);
        uint ip = (0x1234u << 4) + 0x5678; // 0x179B8
        uint dp = (0x9ABCu << 4) + 0xDEF0; // 0xA8AB0
        Assert.Equal(0x027Fu, BitConverter.ToUInt32(img) & 0xFFFF);
        Assert.Equal(ip & 0xFFFF, BitConverter.ToUInt32(img[12..]) & 0xFFFF);
        Assert.Equal(((ip >> 16) << 12) | 0x5D3, BitConverter.ToUInt32(img[16..]));
        Assert.Equal(dp & 0xFFFF, BitConverter.ToUInt32(img[20..]) & 0xFFFF);
        Assert.Equal((dp >> 16) << 12, BitConverter.ToUInt32(img[24..]));

        var back = new FpuState();
        X87Environment.Load(back, size32: true, realLayout: true, img);
        Assert.Equal(ip, back.LastIp);
        Assert.Equal(dp, back.LastDp);
        Assert.Equal(0x5D3, back.LastOpcode);
    }

    [Fact]
    public void RealMode16BitLayoutPacksBits19To16WithTheOpcode()
    {
        Span<byte> img = stackalloc byte[14];
        X87Environment.Build(State(), size32: false, realLayout: true, img);
        uint ip = (0x1234u << 4) + 0x5678, dp = (0x9ABCu << 4) + 0xDEF0;
        Assert.Equal((ushort)ip, BitConverter.ToUInt16(img[6..]));
        Assert.Equal((ushort)((((ip >> 16) & 0xF) << 12) | 0x5D3), BitConverter.ToUInt16(img[8..]));
        Assert.Equal((ushort)dp, BitConverter.ToUInt16(img[10..]));
        Assert.Equal((ushort)(((dp >> 16) & 0xF) << 12), BitConverter.ToUInt16(img[12..]));
    }

    [Fact]
    public void LoadedTagWordKeepsOnlyEmptinessAndLoadedControlWordItsDefinedBits()
    {
        var f = new FpuState();
        f.Mantissa[0] = 0; f.SignExp[0] = 0;                                  // zero → 01
        f.Mantissa[1] = 1UL << 63; f.SignExp[1] = 0x3FFF;                     // 1.0 → 00
        f.Mantissa[2] = 0xC000_0000_0000_0000; f.SignExp[2] = 0xFFFF;         // NaN → 10
        Span<byte> img = stackalloc byte[14];
        BitConverter.TryWriteBytes(img, (ushort)0xFFC0);                     // control: reserved bits set, all unmasked
        BitConverter.TryWriteBytes(img[4..], (ushort)0xFFC0);                // tags 0, 0, 0 for R0..R2, empty above
        X87Environment.Load(f, size32: false, realLayout: false, img);
        Assert.Equal(0xFFE1, f.Tag);
        Assert.Equal(0x1F40, f.Control);
    }

    [Fact]
    public void FnstenvOnA32BitVcpuUsesTheSelectorLayout()
    {
        using var m = new InterpreterMachine(bits: 32);
        m.Cpu.Cr0Value |= Cr0.NE;
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        // fninit; fld1; fnstenv [ebx]
        m.LoadBytes([0xDB, 0xE3, 0xD9, 0xE8, 0xD9, 0x33]);
        Assert.Null(m.Run());
        var env = m.Ram.GetSpan(InterpreterMachine.DataAddress, 28);
        Assert.Equal(0x037Fu, BitConverter.ToUInt32(env) & 0xFFFF);
        Assert.Equal(0x3800u, BitConverter.ToUInt32(env[4..]) & 0xFFFF);       // TOP = 7
        Assert.Equal(0x3FFFu, BitConverter.ToUInt32(env[8..]) & 0xFFFF);       // R7 valid, the rest empty
        Assert.Equal(InterpreterMachine.CodeAddress + 2, BitConverter.ToUInt32(env[12..]));
        uint selectorAndOpcode = BitConverter.ToUInt32(env[16..]);
        Assert.Equal(m.Cpu.Segs[(int)Seg.CS].Selector, (ushort)selectorAndOpcode);
        Assert.Equal(0x1E8u, selectorAndOpcode >> 16);                         // D9 E8
        Assert.Equal(0x037F, m.Cpu.Fpu.Control);                               // already all masked
    }

    [Fact]
    public void FxamReportsAnEmptyRegister()
    {
        using var m = new InterpreterMachine();
        m.LoadBytes([0xDB, 0xE3, 0xD9, 0xE5, 0xDF, 0xE0]); // fninit; fxam; fnstsw ax
        Assert.Null(m.Run());
        Assert.Equal(0x4100UL, m.Cpu.Rax & 0x4700); // C3 C0 = empty
    }
}
