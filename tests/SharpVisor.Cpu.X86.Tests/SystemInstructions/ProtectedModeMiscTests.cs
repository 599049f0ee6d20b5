using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>INT3/INTO, ARPL and LSS in 32-bit protected mode.</summary>
public class ProtectedModeMiscTests
{
    const ulong Code = 0x10000, Handler = 0x20000;

    static SysMachine Flat32()
    {
        var m = new SysMachine();
        CpuSetup.EnterProtectedFlat32(m.Cpu, SysMachine.Code32, SysMachine.Data);
        m.LoadGdtr();
        m.Cpu.IdtBase = SysMachine.Idt;
        m.Cpu.IdtLimit = 256 * 8 - 1;
        m.Cpu.Rsp = 0x70000;
        // 32-bit interrupt gates (SDM Vol. 3A 6.11, Figure 6-2) for #BP and #OF.
        foreach (int v in new[] { 3, 4 })
        {
            ulong gate = (Handler & 0xFFFF) | ((ulong)SysMachine.Code32 << 16) | (0x8EUL << 40) | ((Handler >> 16) << 48);
            m.Ram.WriteU64(SysMachine.Idt + (ulong)v * 8, gate);
        }
        return m;
    }

    /// <summary>INT3 and INTO (with OF set) are trap-like: the pushed EIP is the next instruction (SDM INT n/INTO/INT3); INTO with OF clear does nothing.</summary>
    [Fact]
    public void Int3AndIntoPushNextEip()
    {
        using var m = Flat32();
        var c = m.Cpu;
        m.Asm(Code, 32, a => { a.int3(); a.into(); });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Equal(Handler, c.Rip);
        Assert.Equal(Code + 1, m.Ram.ReadU32(c.Rsp));

        c.Rsp = 0x70000;
        c.Rip = Code + 1;
        c.SetFlags(RFlags.Reserved1);
        Assert.Null(c.StepForTest());
        Assert.Equal(Code + 2, c.Rip); // OF clear: no trap
        c.Rip = Code + 1;
        c.SetFlags(RFlags.Reserved1 | RFlags.OF);
        Assert.Null(c.StepForTest());
        Assert.Equal(Handler, c.Rip);
        Assert.Equal(Code + 2, m.Ram.ReadU32(c.Rsp));
    }

    /// <summary>ARPL raises the destination RPL to the source's and reports through ZF (SDM ARPL).</summary>
    [Fact]
    public void Arpl()
    {
        using var m = Flat32();
        var c = m.Cpu;
        m.Asm(Code, 32, a => a.arpl(ax, bx));
        c.Rip = Code;
        c.Rax = 0x10;
        c.Rbx = 0x2B;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x13UL, c.Rax);
        Assert.True(c.ZF());
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x13UL, c.Rax);
        Assert.False(c.ZF());
    }

    /// <summary>LSS loads SS:ESP from memory; a bad selector faults with ESP unchanged (SDM LDS/LES/LFS/LGS/LSS).</summary>
    [Fact]
    public void LssLoadsStackPointer()
    {
        using var m = Flat32();
        var c = m.Cpu;
        m.Ram.WriteU32(0x50000, 0x12340);
        m.Ram.TryWrite(0x50004, BitConverter.GetBytes((ushort)SysMachine.Data));
        m.Ram.WriteU32(0x50010, 0x55550);
        m.Ram.TryWrite(0x50014, BitConverter.GetBytes((ushort)SysMachine.Code32)); // code segment: not a stack
        m.Asm(Code, 32, a => { a.lss(esp, __fword_ptr[0x50000]); a.lss(esp, __fword_ptr[0x50010]); });
        c.Rip = Code;
        Assert.Null(c.StepForTest());
        Assert.Equal(0x12340UL, c.Rsp);
        Assert.Equal(SysMachine.Data, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(0x12340UL, c.Rsp);
    }
}
