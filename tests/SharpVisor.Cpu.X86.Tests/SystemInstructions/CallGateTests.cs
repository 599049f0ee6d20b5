using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>Call gates (SDM Vol. 3A 5.8.3-5.8.6).</summary>
public class CallGateTests
{
    /// <summary>
    /// A far CALL from ring 3 through a DPL-3 64-bit call gate to ring-0 code switches to TSS.RSP0 with
    /// a null SS and pushes SS, RSP, CS, RIP as 8-byte values (SDM 5.8.6, Figure 5-14); RETFQ returns
    /// to ring 3 popping SS:RSP.
    /// </summary>
    [Fact]
    public void CallGate64ToRing0AndBack()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(cpl: 3);
        const ushort gateSel = 0x48;
        const ulong handler = 0x30000, user = 0x20000, rsp0 = 0x80000, ptr = 0x50000;
        ulong lo = (handler & 0xFFFF) | ((ulong)SysMachine.Code64 << 16) | ((ulong)(0xC | (3 << 5) | 0x80) << 40) | (((handler >> 16) & 0xFFFF) << 48);
        m.Ram.WriteU64(SysMachine.Gdt + gateSel, lo);
        m.Ram.WriteU64(SysMachine.Gdt + gateSel + 8, handler >> 32);
        c.GdtLimit = gateSel + 15;
        m.Ram.WriteU64(SysMachine.Tss + 4, rsp0);
        m.Ram.WriteU32(ptr, 0xDEAD);             // offset: ignored for a call gate
        m.Ram.TryWrite(ptr + 4, BitConverter.GetBytes((ushort)(gateSel | 3)));
        m.Asm(handler, 64, a => { a.mov(rbx, 0x77); a.AddInstruction(Instruction.Create(Code.Retfq)); });
        ulong afterCall = m.Asm(user, 64, a => a.call(__fword_ptr[ptr]));
        c.Rsp = 0x60000;
        c.Rip = user;

        Assert.Null(c.StepForTest());
        Assert.Equal(handler, c.Rip);
        Assert.Equal(0, c.Cpl);
        Assert.Equal(rsp0 - 32, c.Rsp);
        Assert.Equal(0, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(afterCall, m.Ram.ReadU64(rsp0 - 32));
        Assert.Equal((ulong)(SysMachine.UserCode64 | 3), m.Ram.ReadU64(rsp0 - 24));
        Assert.Equal(0x60000UL, m.Ram.ReadU64(rsp0 - 16));
        Assert.Equal((ulong)(SysMachine.UserData | 3), m.Ram.ReadU64(rsp0 - 8));

        Assert.Null(c.StepForTest());
        Assert.Null(c.StepForTest()); // RETFQ to ring 3
        Assert.Equal(afterCall, c.Rip);
        Assert.Equal(3, c.Cpl);
        Assert.Equal(0x60000UL, c.Rsp);
        Assert.Equal(SysMachine.UserData | 3, c.Segs[(int)Seg.SS].Selector);
        Assert.Equal(0x77UL, c.Rbx);
    }

    /// <summary>A gate whose DPL is below CPL is #GP(gate selector) (SDM 5.8.4).</summary>
    [Fact]
    public void CallGateDplCheck()
    {
        using var m = new SysMachine();
        var c = m.Cpu;
        m.EnterLongMode(cpl: 3);
        const ushort gateSel = 0x48;
        ulong lo = ((ulong)SysMachine.Code64 << 16) | ((ulong)(0xC | 0x80) << 40); // DPL 0
        m.Ram.WriteU64(SysMachine.Gdt + gateSel, lo);
        m.Ram.WriteU64(SysMachine.Gdt + gateSel + 8, 0);
        c.GdtLimit = gateSel + 15;
        m.Ram.TryWrite(0x50004, BitConverter.GetBytes((ushort)(gateSel | 3)));
        m.Asm(0x20000, 64, a => a.call(__fword_ptr[0x50000]));
        c.Rip = 0x20000;
        Assert.Equal(Vector.GP, c.StepForTest());
        Assert.Equal(3, c.Cpl);
    }
}
