using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>Flag instructions: CLC, STC, CMC, CLD, STD, CLI, STI, SAHF, LAHF (SDM Vol. 2).</summary>
public static unsafe class FlagOps
{
    /// <summary>This family's rows of <see cref="InstructionTable"/>. CLI and STI need CPL &lt;= IOPL (Iced
    /// marks them privileged, hence able to fault); STI's interrupt shadow is handled by the run loop,
    /// which rechecks interrupts after the next instruction, so it does not end the block.</summary>
    internal static FormSpec[] Forms => FormSpec.Each(&Bind, FormTraits.None,
        Mnemonic.Clc, Mnemonic.Stc, Mnemonic.Cmc, Mnemonic.Cld, Mnemonic.Std, Mnemonic.Cli, Mnemonic.Sti, Mnemonic.Sahf, Mnemonic.Lahf);

    static bool Bind(in Instruction ins, ref Op op)
    {
        op.Exec = ins.Mnemonic switch
        {
            Mnemonic.Clc => &Clc,
            Mnemonic.Stc => &Stc,
            Mnemonic.Cmc => &Cmc,
            Mnemonic.Cld => &Cld,
            Mnemonic.Std => &Std,
            Mnemonic.Cli => &Cli,
            Mnemonic.Sti => &Sti,
            Mnemonic.Sahf => &Sahf,
            _ => &Lahf,
        };
        return true;
    }

    static void Clc(Cpu c, ref Op op) => c.SetCF(false);
    static void Stc(Cpu c, ref Op op) => c.SetCF(true);
    static void Cmc(Cpu c, ref Op op) => c.SetCF(!c.CF());
    static void Cld(Cpu c, ref Op op) => c.FlagsOther &= ~RFlags.DF;
    static void Std(Cpu c, ref Op op) => c.FlagsOther |= RFlags.DF;

    /// <summary>CLI/STI need CPL &lt;= IOPL in protected mode (virtual-interrupt extensions are not advertised).</summary>
    static void Cli(Cpu c, ref Op op)
    {
        if (c.Mode != CpuMode.Real && c.Cpl > c.Iopl)
        {
            throw c.GeneralProtection();
        }
        c.FlagsOther &= ~RFlags.IF;
    }

    static void Sti(Cpu c, ref Op op)
    {
        if (c.Mode != CpuMode.Real && c.Cpl > c.Iopl)
        {
            throw c.GeneralProtection();
        }
        if (!c.IF)
        {
            c.FlagsOther |= RFlags.IF;
            c.SetInterruptShadow(); // interrupts are recognised after the next instruction
            c.RecheckInterrupts();
        }
    }

    /// <summary>SAHF: SF, ZF, AF, PF, CF from AH (bits 7, 6, 4, 2, 0).</summary>
    static void Sahf(Cpu c, ref Op op)
    {
        ulong ah = (c.Regs.Gpr[0] >> 8) & 0xD5;
        c.SetArithFlags((c.GetFlags() & RFlags.OF) | ah);
    }

    static void Lahf(Cpu c, ref Op op) => c.SetReg8(RegisterFile.HighByteBase, (byte)(c.GetFlags() & 0xD7 | 2));
}
