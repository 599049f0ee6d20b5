using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Semantics;

namespace SharpVisor.Cpu.X86.Decode;

/// <summary>
/// The instruction table: one <see cref="InstructionForm"/> per Iced <see cref="Code"/>, the one
/// place the decoder, the interpreter, the translator planned next (issue 10), VT-x (issue 11) and
/// the tests read what is known about an instruction form. It is read at decode (bind) time only;
/// execution goes through the handler the form's binder chose.
/// </summary>
/// <remarks>
/// <para>Keyed by <see cref="Code"/>, not <see cref="Mnemonic"/>: one mnemonic covers forms that differ
/// in what matters here (the string MOVSD/CMPSD and the SSE2 MOVSD/CMPSD, MOV to and from a control
/// register, POP r and POP SS), and Iced's flag, flow and operand data are per Code.</para>
/// <para>Written by mnemonic, with per-Code rows where forms differ: each family in Semantics/ lists
/// its <see cref="FormSpec"/>s (<c>Alu.Forms</c>, ...). A mnemonic row covers every Code of that
/// mnemonic; a Code row overrides it (a null binder marks a form the family does not implement). The
/// families' binders are written per mnemonic (generic over operation and width, choosing the
/// handler from the operand kinds), so about 570 rows stand for about 1,460 Codes.</para>
/// <para>What Iced knows is derived from it here rather than typed again: flags read, written and
/// undefined, branches (<see cref="FlowControl"/>), LOCK legality, privilege, stack and string
/// operands, and how the memory operand is accessed. What Iced cannot know comes from the family's
/// row: the binder, block ends that are not branches (mode changes, interrupt shadows, HLT), faults
/// other than through memory, and the VM-exit reason.</para>
/// </remarks>
public static unsafe class InstructionTable
{
    static readonly InstructionForm[] s_forms = Build();

    /// <summary>The row of <paramref name="code"/> (a row with no binder when the form is not implemented).</summary>
    public static ref readonly InstructionForm Form(Code code) => ref s_forms[(int)code];

    /// <summary>Every row, indexed by <see cref="Code"/>.</summary>
    public static ReadOnlySpan<InstructionForm> Forms => s_forms;

    /// <summary>The families' rows, in the order they are applied.</summary>
    static IEnumerable<FormSpec[]> Families() =>
    [
        Alu.Forms, DataMove.Forms, Stack.Forms, Control.Forms, FlagOps.Forms, Shift.Forms, BitOps.Forms,
        MulDiv.Forms, StringOps.Forms, Atomic.Forms, Misc.Forms, SystemOps.Forms, X87.Forms, Semantics.Sse.Forms,
    ];

    static InstructionForm[] Build()
    {
        int count = Enum.GetValues<Code>().Length;
        var specs = new FormSpec?[count];
        var byCode = new bool[count];
        var mnemonicCodes = new List<Code>[Enum.GetValues<Mnemonic>().Length];
        for (int i = 0; i < count; i++)
        {
            (mnemonicCodes[(int)((Code)i).Mnemonic()] ??= []).Add((Code)i);
        }
        foreach (var family in Families())
        {
            foreach (var spec in family)
            {
                if (spec.ByCode)
                {
                    if (byCode[(int)spec.Code])
                    {
                        ThrowHelper.InvalidOperation($"instruction table: {spec.Code} has two rows");
                    }
                    byCode[(int)spec.Code] = true;
                    specs[(int)spec.Code] = spec;
                    continue;
                }
                foreach (var code in mnemonicCodes[(int)spec.Mnemonic] ?? [])
                {
                    if (byCode[(int)code])
                    {
                        continue; // a Code row wins over its mnemonic's row, whichever comes first
                    }
                    if (specs[(int)code] is not null)
                    {
                        ThrowHelper.InvalidOperation($"instruction table: mnemonic {spec.Mnemonic} has two rows");
                    }
                    specs[(int)code] = spec;
                }
            }
        }
        var forms = new InstructionForm[count];
        var factory = new InstructionInfoFactory();
        for (int i = 1; i < count; i++) // Code.INVALID (0) has no row
        {
            if (specs[i] is { } spec && spec.Bind != null)
            {
                forms[i] = Derive((Code)i, spec, factory);
            }
        }
        return forms;
    }

    /// <summary>Completes a family's row for one Code with what Iced knows about the form.</summary>
    static InstructionForm Derive(Code code, in FormSpec spec, InstructionInfoFactory factory)
    {
        var opCode = code.ToOpCode();
        var ins = Sample(code, opCode, out int memoryOperand);
        ref readonly var info = ref factory.GetInfo(ins, InstructionInfoOptions.NoRegisterUsage | InstructionInfoOptions.NoMemoryUsage);

        var access = memoryOperand < 0 ? SegmentAccess.None : info.GetOpAccess(memoryOperand) switch
        {
            OpAccess.Read or OpAccess.CondRead => SegmentAccess.Read,
            OpAccess.Write or OpAccess.CondWrite => SegmentAccess.Write,
            OpAccess.ReadWrite or OpAccess.ReadCondWrite => SegmentAccess.ReadWrite,
            _ => SegmentAccess.None, // NoMemAccess: LEA, NOP m, PREFETCHh, INVLPG...
        };
        bool implicitMemory = code.IsStackInstruction() || HasStringOperand(opCode) || (spec.Traits & FormTraits.ImplicitMemory) != 0;

        var flow = code.FlowControl();
        BlockEnd end = (spec.Traits & FormTraits.Halts) != 0 ? BlockEnd.Halt
            : (spec.Traits & FormTraits.InterruptShadow) != 0 ? BlockEnd.InterruptShadow
            : (spec.Traits & FormTraits.ChangesMode) != 0 ? BlockEnd.StateChange
            : flow != FlowControl.Next ? BlockEnd.ControlFlow
            : BlockEnd.None;

        FaultKind faults = (spec.Traits & FormTraits.MayFault) != 0 || code.IsPrivileged() || implicitMemory || flow != FlowControl.Next
            ? FaultKind.May
            : memoryOperand >= 0 && access != SegmentAccess.None ? FaultKind.ThroughMemoryOperand
            : FaultKind.Never;

        return new InstructionForm(
            spec.Bind,
            opCode.CanUseLockPrefix ? LockRule.MemoryDestination : LockRule.Ud,
            ToRflags(ins.RflagsRead),
            ToRflags(ins.RflagsWritten | ins.RflagsCleared | ins.RflagsSet),
            ToRflags(ins.RflagsUndefined),
            faults,
            end,
            access,
            implicitMemory,
            spec.VmExit);
    }

    /// <summary>
    /// A representative instruction of <paramref name="code"/> for Iced's per-instruction queries:
    /// the memory-capable operand (if any) is a memory operand, other operands are distinct
    /// registers (so XOR/SUB r,r is not taken for the zeroing idiom, whose flags Iced reports
    /// differently), the immediate is 2 (a shift by 0 or 1 has other flags; 2 is the general
    /// case), and the code size is 32 (segment checks, the one user of the access, apply only
    /// outside 64-bit mode, where a few forms' accesses differ).
    /// </summary>
    internal static Instruction Sample(Code code, OpCodeInfo opCode, out int memoryOperand)
    {
        var ins = new Instruction { Code = code, CodeSize = CodeSize.Code32, Immediate8 = 2 };
        memoryOperand = -1;
        for (int i = 0; i < opCode.OpCount; i++)
        {
            if (IsModRmMemory(opCode.GetOpKind(i)))
            {
                ins.SetOpKind(i, OpKind.Memory);
                ins.MemoryBase = Register.EBX;
                memoryOperand = i;
            }
            else
            {
                ins.SetOpKind(i, OpKind.Register);
                ins.SetOpRegister(i, Register.EAX + i);
            }
        }
        return ins;
    }

    static bool IsModRmMemory(OpCodeOperandKind k) => k is OpCodeOperandKind.mem or OpCodeOperandKind.mem_offs
        or OpCodeOperandKind.r8_or_mem or OpCodeOperandKind.r16_or_mem or OpCodeOperandKind.r32_or_mem or OpCodeOperandKind.r64_or_mem
        or OpCodeOperandKind.r32_or_mem_mpx or OpCodeOperandKind.r64_or_mem_mpx or OpCodeOperandKind.mm_or_mem
        or OpCodeOperandKind.xmm_or_mem or OpCodeOperandKind.ymm_or_mem or OpCodeOperandKind.zmm_or_mem
        or OpCodeOperandKind.seg_rBX_al; // XLAT: Iced decodes its table entry as a memory operand

    static bool HasStringOperand(OpCodeInfo opCode)
    {
        for (int i = 0; i < opCode.OpCount; i++)
        {
            if (opCode.GetOpKind(i) is OpCodeOperandKind.seg_rSI or OpCodeOperandKind.es_rDI or OpCodeOperandKind.seg_rDI)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Iced's flag set as RFLAGS bits (the x87 condition codes are not RFLAGS and are left out).</summary>
    static uint ToRflags(RflagsBits b)
    {
        ulong f = 0;
        if ((b & RflagsBits.CF) != 0) f |= RFlags.CF;
        if ((b & RflagsBits.PF) != 0) f |= RFlags.PF;
        if ((b & RflagsBits.AF) != 0) f |= RFlags.AF;
        if ((b & RflagsBits.ZF) != 0) f |= RFlags.ZF;
        if ((b & RflagsBits.SF) != 0) f |= RFlags.SF;
        if ((b & RflagsBits.IF) != 0) f |= RFlags.IF;
        if ((b & RflagsBits.DF) != 0) f |= RFlags.DF;
        if ((b & RflagsBits.OF) != 0) f |= RFlags.OF;
        if ((b & RflagsBits.AC) != 0) f |= RFlags.AC;
        return (uint)f;
    }
}

/// <summary>
/// One instruction form (one Iced <see cref="Code"/>): how to bind it and what a consumer needs
/// to know without running it. Flags are RFLAGS bit masks (<see cref="RFlags"/>).
/// </summary>
public readonly unsafe struct InstructionForm(
    delegate*<in Instruction, ref Op, bool> bind, LockRule lockRule, uint flagsRead, uint flagsWritten, uint flagsUndefined,
    FaultKind faults, BlockEnd endsBlock, SegmentAccess memoryOperand, bool implicitMemory, VmExit vmExit)
{
    /// <summary>Fills the family-specific part of an <see cref="Op"/> and chooses its handler; null when
    /// the form is not implemented (it then raises #UD, counted and logged once).</summary>
    public readonly delegate*<in Instruction, ref Op, bool> Bind = bind;
    public bool Implemented => Bind != null;
    public readonly LockRule Lock = lockRule;
    /// <summary>Flags whose value the form reads.</summary>
    public readonly uint FlagsRead = flagsRead;
    /// <summary>Flags the form may write with a defined value (including those it always sets or clears).
    /// "May": a shift or rotate by a count of 0 leaves every flag unchanged, so a consumer tracking
    /// liveness treats these as possibly unchanged, i.e. also read, for the count-in-CL forms.</summary>
    public readonly uint FlagsWritten = flagsWritten;
    /// <summary>Flags the architecture leaves undefined. The interpreter still writes a definite value
    /// (the host's, as the differential tests check), so a second tier must produce the same one.</summary>
    public readonly uint FlagsUndefined = flagsUndefined;
    public readonly FaultKind Faults = faults;
    /// <summary>Why the block ends after this form (<see cref="BlockEnd.None"/>: it does not).</summary>
    public readonly BlockEnd EndsBlock = endsBlock;
    /// <summary>How the ModRM memory operand is accessed when the form has one (None: no memory operand,
    /// or one that is only an address: LEA, NOP m, PREFETCHh, INVLPG, CLFLUSH).</summary>
    public readonly SegmentAccess MemoryOperand = memoryOperand;
    /// <summary>The form touches memory other than its ModRM operand: the stack, string operands,
    /// descriptor tables, the IDT, the TSS.</summary>
    public readonly bool ImplicitMemory = implicitMemory;
    /// <summary>The basic VM-exit reason this form can cause in VMX non-root operation (SDM Vol. 3C 26.1.2,
    /// 26.1.3), or <see cref="VmExit.None"/>.</summary>
    public readonly VmExit VmExit = vmExit;
}

/// <summary>A family's claim on instruction forms: every Code of <see cref="Mnemonic"/>, or exactly
/// <see cref="Code"/>; what Iced cannot say about them is in <see cref="Traits"/> and <see cref="VmExit"/>.</summary>
public readonly unsafe struct FormSpec
{
    public readonly Mnemonic Mnemonic;
    public readonly Code Code;
    public readonly bool ByCode;
    public readonly delegate*<in Instruction, ref Op, bool> Bind;
    public readonly FormTraits Traits;
    public readonly VmExit VmExit;

    public FormSpec(Mnemonic mnemonic, delegate*<in Instruction, ref Op, bool> bind, FormTraits traits = FormTraits.None, VmExit vmExit = VmExit.None)
    {
        Mnemonic = mnemonic;
        Bind = bind;
        Traits = traits;
        VmExit = vmExit;
    }

    public FormSpec(Code code, delegate*<in Instruction, ref Op, bool> bind, FormTraits traits = FormTraits.None, VmExit vmExit = VmExit.None)
    {
        Code = code;
        ByCode = true;
        Bind = bind;
        Traits = traits;
        VmExit = vmExit;
    }

    /// <summary>A form of a listed mnemonic that the family does not implement (it raises #UD and is logged).</summary>
    public static FormSpec NotImplemented(Code code) => new(code, null);

    /// <summary>The same binder and traits for several mnemonics.</summary>
    public static FormSpec[] Each(delegate*<in Instruction, ref Op, bool> bind, FormTraits traits, params Mnemonic[] mnemonics)
    {
        var specs = new FormSpec[mnemonics.Length];
        for (int i = 0; i < mnemonics.Length; i++)
        {
            specs[i] = new FormSpec(mnemonics[i], bind, traits);
        }
        return specs;
    }
}

/// <summary>What a family's row adds to Iced's data.</summary>
[Flags]
public enum FormTraits : byte
{
    None = 0,
    /// <summary>May raise an exception other than through its memory operand: privilege or mode
    /// checks Iced does not flag, #DE, #NM/#MF/#XM, #UD for a feature not advertised, a bad selector.</summary>
    MayFault = 1,
    /// <summary>Changes state that decoding, translation or the interrupt check depends on (CR0/CR3/CR4,
    /// EFER, segment registers, IF through POPF, the TLB): the block ends after it.</summary>
    ChangesMode = 2,
    /// <summary>Opens an interrupt shadow (MOV SS, POP SS): the block ends after it.</summary>
    InterruptShadow = 4,
    /// <summary>Stops the vCPU (HLT): the block ends after it.</summary>
    Halts = 8,
    /// <summary>Reads or writes memory besides its operands (descriptor tables, the TSS, the stack of
    /// another privilege level); stack and string forms are recognised from Iced.</summary>
    ImplicitMemory = 16,
}

/// <summary>Whether LOCK is legal (SDM Vol. 2A LOCK: only the listed read-modify-write forms, and only
/// with a memory destination; otherwise #UD).</summary>
public enum LockRule : byte
{
    Ud,
    MemoryDestination,
}

/// <summary>Whether the form can raise an exception, for a consumer that must know where state is exact.</summary>
public enum FaultKind : byte
{
    /// <summary>Never (register-only integer forms, CLC...). Debug traps are taken between instructions.</summary>
    Never,
    /// <summary>Only through its memory operand (#PF, #GP, #SS, #AC): the register forms never fault.</summary>
    ThroughMemoryOperand,
    /// <summary>In any form.</summary>
    May,
}

/// <summary>Why a block ends after a form.</summary>
public enum BlockEnd : byte
{
    None,
    /// <summary>A branch, call, return, interrupt or exception-raising form (Iced's <see cref="FlowControl"/>).</summary>
    ControlFlow,
    /// <summary>See <see cref="FormTraits.ChangesMode"/>.</summary>
    StateChange,
    /// <summary>See <see cref="FormTraits.InterruptShadow"/>.</summary>
    InterruptShadow,
    Halt,
}

/// <summary>
/// The basic exit reason a form can cause in VMX non-root operation, unconditionally or under a
/// VM-execution control (SDM Vol. 3C 26.1.2, 26.1.3; numbers from Appendix C, see
/// <see cref="VmExitReasons.BasicExitReason"/>). Task switches (reason 9) and exceptions (reason 0),
/// which depend on the operands and the exception bitmap rather than the form, are not listed.
/// </summary>
public enum VmExit : byte
{
    None,
    Cpuid,
    Hlt,
    Invd,
    Invlpg,
    Rdpmc,
    Rdtsc,
    Rsm,
    Vmcall,
    /// <summary>MOV to/from CR, CLTS, LMSW.</summary>
    ControlRegisterAccess,
    MovDr,
    /// <summary>IN, INS, OUT, OUTS.</summary>
    IoInstruction,
    Rdmsr,
    Wrmsr,
    Mwait,
    Monitor,
    Pause,
    /// <summary>LGDT, LIDT, SGDT, SIDT.</summary>
    GdtrIdtrAccess,
    /// <summary>LLDT, LTR, SLDT, STR.</summary>
    LdtrTrAccess,
    Rdtscp,
    /// <summary>WBINVD, WBNOINVD.</summary>
    Wbinvd,
    Xsetbv,
    Rdrand,
    Invpcid,
    Rdseed,
}

public static class VmExitReasons
{
    /// <summary>The basic exit reason number (SDM Vol. 3C Appendix C), or -1 for <see cref="VmExit.None"/>.</summary>
    public static int BasicExitReason(this VmExit e) => e switch
    {
        VmExit.Cpuid => 10,
        VmExit.Hlt => 12,
        VmExit.Invd => 13,
        VmExit.Invlpg => 14,
        VmExit.Rdpmc => 15,
        VmExit.Rdtsc => 16,
        VmExit.Rsm => 17,
        VmExit.Vmcall => 18,
        VmExit.ControlRegisterAccess => 28,
        VmExit.MovDr => 29,
        VmExit.IoInstruction => 30,
        VmExit.Rdmsr => 31,
        VmExit.Wrmsr => 32,
        VmExit.Mwait => 36,
        VmExit.Monitor => 39,
        VmExit.Pause => 40,
        VmExit.GdtrIdtrAccess => 46,
        VmExit.LdtrTrAccess => 47,
        VmExit.Rdtscp => 51,
        VmExit.Wbinvd => 54,
        VmExit.Xsetbv => 55,
        VmExit.Rdrand => 57,
        VmExit.Invpcid => 58,
        VmExit.Rdseed => 61,
        _ => -1,
    };
}
