using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>
/// System instructions (SDM Vol. 2 entry of each): control/debug register moves, MSRs, CPUID,
/// TSC, HLT, port I/O, descriptor tables, far transfers, SYSCALL/SYSENTER, IRET, INT n. The
/// binders live here; the larger pieces of semantics are in System/Ops/ (ControlRegisters,
/// MsrAccess, FarTransfer, SegmentInstructions).
/// </summary>
public static unsafe class SystemOps
{
    const FormTraits Faults = FormTraits.MayFault;
    const FormTraits Descriptors = FormTraits.MayFault | FormTraits.ImplicitMemory;

    /// <summary>This family's rows of <see cref="InstructionTable"/>. Most of these need CPL 0, which Iced
    /// knows (privileged forms may fault); the rows add the other faults, block ends and VM exits.</summary>
    internal static FormSpec[] Forms =>
    [
        new(Mnemonic.Rdmsr, &BindSimple, Faults, VmExit.Rdmsr),
        new(Mnemonic.Wrmsr, &BindSimple, Faults | FormTraits.ChangesMode, VmExit.Wrmsr), // EFER, FS/GS base, APIC base...
        new(Mnemonic.Cpuid, &BindSimple, FormTraits.None, VmExit.Cpuid),
        new(Mnemonic.Rdtsc, &BindSimple, Faults, VmExit.Rdtsc), // #GP with CR4.TSD above CPL 0
        new(Mnemonic.Rdtscp, &BindSimple, Faults, VmExit.Rdtscp),
        new(Mnemonic.Rdpmc, &BindSimple, Faults, VmExit.Rdpmc),
        new(Mnemonic.Hlt, &BindSimple, FormTraits.Halts, VmExit.Hlt),
        new(Mnemonic.Clts, &BindSimple, Faults, VmExit.ControlRegisterAccess),
        new(Mnemonic.Invd, &BindSimple, Faults, VmExit.Invd),
        new(Mnemonic.Wbinvd, &BindSimple, Faults, VmExit.Wbinvd),
        new(Mnemonic.Swapgs, &BindSimple, Faults),
        // SYSCALL/SYSRET/SYSENTER/SYSEXIT, INT n, IRET, RET far: branches to Iced; they also switch modes
        // or stacks and read descriptor tables, the IDT or the TSS.
        new(Mnemonic.Syscall, &BindSimple, Faults),
        new(Mnemonic.Sysret, &BindSimple, Faults),
        new(Mnemonic.Sysretq, &BindSimple, Faults),
        new(Mnemonic.Sysenter, &BindSimple, Faults),
        new(Mnemonic.Sysexit, &BindSimple, Faults),
        new(Mnemonic.Sysexitq, &BindSimple, Faults),
        new(Mnemonic.Int3, &BindSimple, Descriptors),
        new(Mnemonic.Int1, &BindSimple, Descriptors),
        new(Mnemonic.Int, &BindSimple, Descriptors),
        new(Mnemonic.Into, &BindSimple, Descriptors),
        new(Mnemonic.Iret, &BindSimple, Descriptors),
        new(Mnemonic.Iretd, &BindSimple, Descriptors),
        new(Mnemonic.Iretq, &BindSimple, Descriptors),
        new(Mnemonic.Retf, &BindSimple, Descriptors),
        new(Mnemonic.In, &BindIo, Faults, VmExit.IoInstruction), // IOPL and the TSS I/O bitmap: #GP
        new(Mnemonic.Out, &BindIo, Faults, VmExit.IoInstruction),
        new(Mnemonic.Invlpg, &BindSimple, FormTraits.ChangesMode, VmExit.Invlpg),
        new(Mnemonic.Lmsw, &BindSimple, FormTraits.ChangesMode, VmExit.ControlRegisterAccess),
        new(Mnemonic.Smsw, &BindSimple),
        new(Mnemonic.Lgdt, &BindTable, FormTraits.None, VmExit.GdtrIdtrAccess),
        new(Mnemonic.Lidt, &BindTable, FormTraits.None, VmExit.GdtrIdtrAccess),
        new(Mnemonic.Sgdt, &BindTable, FormTraits.None, VmExit.GdtrIdtrAccess),
        new(Mnemonic.Sidt, &BindTable, FormTraits.None, VmExit.GdtrIdtrAccess),
        new(Mnemonic.Lldt, &BindSimple, Descriptors, VmExit.LdtrTrAccess),
        new(Mnemonic.Ltr, &BindSimple, Descriptors, VmExit.LdtrTrAccess),
        new(Mnemonic.Sldt, &BindSimple, Faults, VmExit.LdtrTrAccess), // #UD in real and virtual-8086 mode
        new(Mnemonic.Str, &BindSimple, Faults, VmExit.LdtrTrAccess),
        new(Mnemonic.Lar, &BindSimple, Descriptors),
        new(Mnemonic.Lsl, &BindSimple, Descriptors),
        new(Mnemonic.Verr, &BindSimple, Descriptors),
        new(Mnemonic.Verw, &BindSimple, Descriptors),
        new(Mnemonic.Arpl, &BindSimple, Faults), // #UD in real and virtual-8086 mode
        // LDS/LES/LFS/LGS/LSS load a segment register (see DataMove's MOV to Sreg).
        .. FormSpec.Each(&BindFarPointer, Descriptors | FormTraits.ChangesMode,
            Mnemonic.Lds, Mnemonic.Les, Mnemonic.Lfs, Mnemonic.Lgs, Mnemonic.Lss),
        // Not advertised in CPUID, so #UD exactly like a CPU without them (no "unimplemented" log).
        new(Mnemonic.Invpcid, &BindNotAdvertised, Faults, VmExit.Invpcid),
        new(Mnemonic.Xgetbv, &BindNotAdvertised, Faults),
        new(Mnemonic.Xsetbv, &BindNotAdvertised, Faults, VmExit.Xsetbv),
        new(Mnemonic.Monitor, &BindNotAdvertised, Faults, VmExit.Monitor),
        new(Mnemonic.Mwait, &BindNotAdvertised, Faults, VmExit.Mwait),
    ];

    static bool BindNotAdvertised(in Instruction ins, ref Op op)
    {
        op.Exec = &Ud;
        return true;
    }

    static void Ud(Cpu c, ref Op op) => throw c.InvalidOpcode();

    static int OperandSizeOf(Code code)
    {
        string n = code.ToString();
        return n.EndsWith("_16", StringComparison.Ordinal) || n.EndsWith('w') ? 2 : n.Contains("64", StringComparison.Ordinal) || n.EndsWith('q') ? 8 : 4;
    }

    static bool BindSimple(in Instruction ins, ref Op op)
    {
        bool mem = ins.OpCount > 0 && ins.Op0Kind == OpKind.Memory;
        switch (ins.Code)
        {
            case Code.Rdmsr: op.Exec = &Rdmsr; break;
            case Code.Wrmsr: op.Exec = &Wrmsr; break;
            case Code.Cpuid: op.Exec = &Cpuid; break;
            case Code.Rdtsc: op.Exec = &Rdtsc; break;
            case Code.Rdtscp: op.Exec = &Rdtscp; break;
            case Code.Rdpmc: op.Exec = &Rdpmc; break;
            case Code.Hlt: op.Exec = &Hlt; break;
            case Code.Clts: op.Exec = &Clts; break;
            case Code.Invd or Code.Wbinvd: op.Exec = &CacheFlush; break;
            case Code.Swapgs: op.Exec = &Swapgs; break;
            case Code.Syscall: op.Exec = &FarTransfer.Syscall; break;
            case Code.Sysretd or Code.Sysretq: op.Sub = (byte)(ins.Code == Code.Sysretq ? 1 : 0); op.Exec = &Sysret; break;
            case Code.Sysenter: op.Exec = &FarTransfer.Sysenter; break;
            case Code.Sysexitd or Code.Sysexitq: op.Sub = (byte)(ins.Code == Code.Sysexitq ? 1 : 0); op.Exec = &FarTransfer.Sysexit; break;
            case Code.Int3: op.Exec = &Int3; break;
            case Code.Int1: op.Exec = &Int1; break;
            case Code.Int_imm8: op.Exec = &IntN; break;
            case Code.Into: op.Exec = &Into; break;
            case Code.Iretw or Code.Iretd or Code.Iretq:
                op.Size = (byte)(ins.Code switch { Code.Iretw => 2, Code.Iretd => 4, _ => 8 });
                op.Exec = &FarTransfer.Iret;
                break;
            case Code.Retfw or Code.Retfd or Code.Retfq or Code.Retfw_imm16 or Code.Retfd_imm16 or Code.Retfq_imm16:
                op.Size = (byte)(ins.Code is Code.Retfw or Code.Retfw_imm16 ? 2 : ins.Code is Code.Retfd or Code.Retfd_imm16 ? 4 : 8);
                op.Imm = ins.OpCount > 0 ? ins.Immediate16 : 0u;
                op.Exec = &FarTransfer.FarRet;
                break;
            case Code.Invlpg_m: op.Exec = &Invlpg; break;
            case Code.Lmsw_rm16 or Code.Lmsw_r32m16 or Code.Lmsw_r64m16: op.Exec = &Lmsw; break;
            case Code.Smsw_rm16 or Code.Smsw_r32m16 or Code.Smsw_r64m16:
                op.Size = (byte)(mem ? 2 : ins.Op0Register.GetSize());
                op.Exec = &Smsw;
                break;
            case Code.Lldt_rm16 or Code.Lldt_r32m16 or Code.Lldt_r64m16: op.Exec = &SegmentInstructions.Lldt; break;
            case Code.Ltr_rm16 or Code.Ltr_r32m16 or Code.Ltr_r64m16: op.Exec = &SegmentInstructions.Ltr; break;
            case Code.Sldt_rm16 or Code.Sldt_r32m16 or Code.Sldt_r64m16 or Code.Str_rm16 or Code.Str_r32m16 or Code.Str_r64m16:
                op.Sub = (byte)(ins.Mnemonic == Mnemonic.Str ? 1 : 0);
                op.Size = (byte)(mem ? 2 : ins.Op0Register.GetSize());
                op.Exec = &SegmentInstructions.StoreSystemSelector;
                break;
            case Code.Lar_r16_rm16 or Code.Lar_r32_r32m16 or Code.Lar_r64_r64m16 or Code.Lsl_r16_rm16 or Code.Lsl_r32_r32m16 or Code.Lsl_r64_r64m16:
                op.Sub = (byte)(ins.Mnemonic == Mnemonic.Lsl ? 1 : 0);
                op.Size = (byte)ins.Op0Register.GetSize();
                if (ins.Op1Kind == OpKind.Memory)
                {
                    op.Flags |= OpFlags.MemoryOperand;
                }
                op.Exec = &SegmentInstructions.LarLsl;
                break;
            case Code.Verr_rm16 or Code.Verr_r32m16 or Code.Verr_r64m16 or Code.Verw_rm16 or Code.Verw_r32m16 or Code.Verw_r64m16:
                op.Sub = (byte)(ins.Mnemonic == Mnemonic.Verw ? 1 : 0);
                op.Exec = &SegmentInstructions.Verify;
                break;
            case Code.Arpl_rm16_r16 or Code.Arpl_r32m16_r32:
                op.Exec = &SegmentInstructions.Arpl;
                break;
            default:
                return false;
        }
        return true;
    }

    static bool BindTable(in Instruction ins, ref Op op)
    {
        if (ins.Op0Kind != OpKind.Memory)
        {
            return false;
        }
        op.Size = (byte)OperandSizeOf(ins.Code);
        op.Sub = (byte)(ins.Mnemonic is Mnemonic.Lidt or Mnemonic.Sidt ? 1 : 0);
        op.Exec = ins.Mnemonic is Mnemonic.Lgdt or Mnemonic.Lidt ? &SegmentInstructions.LoadTable : &SegmentInstructions.StoreTable;
        return true;
    }

    static bool BindFarPointer(in Instruction ins, ref Op op)
    {
        if (ins.Op1Kind != OpKind.Memory)
        {
            return false;
        }
        op.Size = (byte)ins.Op0Register.GetSize();
        op.Sub = ins.Mnemonic switch
        {
            Mnemonic.Lds => (byte)Seg.DS,
            Mnemonic.Les => (byte)Seg.ES,
            Mnemonic.Lfs => (byte)Seg.FS,
            Mnemonic.Lgs => (byte)Seg.GS,
            _ => (byte)Seg.SS,
        };
        op.Exec = &SegmentInstructions.LoadFarPointer;
        return true;
    }

    // ------------------------------------------------------------------ MOV CR / DR

    /// <summary>MOV to/from control and debug registers (called by DataMove for those MOV forms).</summary>
    /// <remarks>Sub = register number, R1 = the general-purpose register, Size = 4 or 8 (64-bit mode).</remarks>
    public static bool BindMovSystem(in Instruction ins, ref Op op)
    {
        Iced.Intel.Register r0 = ins.Op0Register, r1 = ins.Op1Register;
        bool toSystem = r0.IsCR() || r0.IsDR();
        Iced.Intel.Register sys = toSystem ? r0 : r1;
        Iced.Intel.Register gpr = toSystem ? r1 : r0;
        op.R1 = Binder.Slot(gpr);
        op.Size = (byte)gpr.GetSize();
        if (sys.IsCR())
        {
            op.Sub = (byte)(sys - Iced.Intel.Register.CR0);
            op.Exec = toSystem ? &MovToCr : &MovFromCr;
        }
        else
        {
            op.Sub = (byte)(sys - Iced.Intel.Register.DR0);
            op.Exec = toSystem ? &MovToDr : &MovFromDr;
        }
        return true;
    }

    static void RequireCpl0(Cpu c)
    {
        if (c.Cpl != 0)
        {
            throw c.GeneralProtection(0);
        }
    }

    static ulong GprOperand(Cpu c, ref Op op) => op.Size == 8 ? c.Regs.Gpr[op.R1] : (uint)c.Regs.Gpr[op.R1];

    static void SetGpr(Cpu c, ref Op op, ulong v) => c.Regs.Gpr[op.R1] = op.Size == 8 ? v : (uint)v;

    static void MovFromCr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        SetGpr(c, ref op, ControlRegisters.Read(c, op.Sub));
    }

    static void MovToCr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ControlRegisters.Write(c, op.Sub, GprOperand(c, ref op));
        c.ExitBlock = true;
    }

    static void MovFromDr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        SetGpr(c, ref op, ControlRegisters.ReadDr(c, op.Sub));
    }

    static void MovToDr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ControlRegisters.WriteDr(c, op.Sub, GprOperand(c, ref op));
    }

    static void Clts(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        c.Cr0Value &= ~Cr0.TS;
    }

    /// <summary>LMSW: loads CR0[3:0] (PE, MP, EM, TS) but can never clear PE (SDM Vol. 2A LMSW).</summary>
    static void Lmsw(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ulong v = (op.Flags & OpFlags.MemoryOperand) != 0 ? c.Read16(op.Linear(c)) : (ushort)c.Regs.Gpr[op.R1];
        ulong cr0 = (c.Cr0Value & ~0xEUL) | (v & 0xF) | (c.Cr0Value & Cr0.PE);
        ControlRegisters.WriteCr0(c, cr0);
        c.ExitBlock = true;
    }

    /// <summary>SMSW: a memory destination gets CR0[15:0]; a register gets CR0 at the operand size (UMIP not advertised).</summary>
    static void Smsw(Cpu c, ref Op op)
    {
        if ((op.Flags & OpFlags.MemoryOperand) != 0)
        {
            c.Write16(op.Linear(c), (ushort)c.Cr0Value);
            return;
        }
        switch (op.Size)
        {
            case 2: S16.SetReg(c, op.R1, c.Cr0Value); break;
            case 4: S32.SetReg(c, op.R1, c.Cr0Value); break;
            default: c.Regs.Gpr[op.R1] = c.Cr0Value; break;
        }
    }

    static void Invlpg(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        c.InvalidatePage(op.Linear(c));
    }

    /// <summary>INVD/WBINVD: caches are not modelled (guest RAM is always coherent); privileged.</summary>
    static void CacheFlush(Cpu c, ref Op op) => RequireCpl0(c);

    // ------------------------------------------------------------------ MSRs, CPUID, TSC

    static void Rdmsr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ulong v = MsrAccess.Read(c, (uint)c.Regs.Gpr[1]);
        c.Regs.Gpr[0] = (uint)v;
        c.Regs.Gpr[2] = v >> 32;
    }

    static void Wrmsr(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        ulong v = ((c.Regs.Gpr[2] & 0xFFFF_FFFF) << 32) | (uint)c.Regs.Gpr[0];
        MsrAccess.Write(c, (uint)c.Regs.Gpr[1], v);
        c.ExitBlock = true; // EFER, FS/GS base may change how the rest decodes or addresses
    }

    static void Cpuid(Cpu c, ref Op op)
    {
        var (a, b, cx, d) = c.Platform.CpuId.Query((uint)c.Regs.Gpr[0], (uint)c.Regs.Gpr[1], (uint)c.Index, c.Platform.TscHz);
        c.Regs.Gpr[0] = a;
        c.Regs.Gpr[3] = b;
        c.Regs.Gpr[1] = cx;
        c.Regs.Gpr[2] = d;
    }

    /// <summary>CR4.TSD makes RDTSC/RDTSCP privileged (SDM Vol. 2B RDTSC).</summary>
    static void CheckTsd(Cpu c)
    {
        if ((c.Cr4Value & Cr4.TSD) != 0 && c.Cpl != 0)
        {
            throw c.GeneralProtection(0);
        }
    }

    static void Rdtsc(Cpu c, ref Op op)
    {
        CheckTsd(c);
        ulong tsc = c.Tsc.Read();
        c.Regs.Gpr[0] = (uint)tsc;
        c.Regs.Gpr[2] = tsc >> 32;
    }

    static void Rdtscp(Cpu c, ref Op op)
    {
        CheckTsd(c);
        ulong tsc = c.Tsc.Read();
        c.Regs.Gpr[0] = (uint)tsc;
        c.Regs.Gpr[2] = tsc >> 32;
        c.Regs.Gpr[1] = (uint)c.Msr.TscAux;
    }

    /// <summary>RDPMC: no performance counters exist (CPUID leaf 0AH reports none), so every index is invalid: #GP.</summary>
    static void Rdpmc(Cpu c, ref Op op)
    {
        c.Log.Once("rdpmc", "cpu", $"cpu{c.Index}: RDPMC with ECX=0x{(uint)c.Regs.Gpr[1]:x}: no performance counters (raising #GP)");
        throw c.GeneralProtection(0);
    }

    // ------------------------------------------------------------------ HLT, SWAPGS, INT

    /// <summary>HLT: the vCPU stops until an interrupt, NMI, INIT or SIPI; the saved RIP is the next instruction.</summary>
    static void Hlt(Cpu c, ref Op op)
    {
        RequireCpl0(c);
        c.Halted = true;
        c.ExitBlock = true;
    }

    static void Swapgs(Cpu c, ref Op op)
    {
        if (c.Mode != CpuMode.Long64)
        {
            throw c.InvalidOpcode();
        }
        RequireCpl0(c);
        ulong gs = c.Segs[(int)Seg.GS].Base;
        c.Segs[(int)Seg.GS].Base = c.Msr.KernelGsBase;
        c.Regs.SegBase[(int)Seg.GS] = c.Msr.KernelGsBase;
        c.Msr.KernelGsBase = gs;
    }

    static void IntN(Cpu c, ref Op op)
    {
        if (c.Mode == CpuMode.Virtual8086 && c.Iopl < 3)
        {
            throw c.GeneralProtection(0);
        }
        c.SoftwareInterrupt((byte)op.Imm, false);
    }

    /// <summary>SYSRET, then the single-step trap it owes when it loaded TF = 1 (see <see cref="Cpu.SingleStepTrapAfterSysret"/>).</summary>
    static void Sysret(Cpu c, ref Op op)
    {
        FarTransfer.Sysret(c, ref op);
        c.SingleStepTrapAfterSysret();
    }

    static void Int3(Cpu c, ref Op op) => c.SoftwareInterrupt(Vector.BP, true);

    /// <summary>INT1/ICEBP (F1): #DB as a trap, without the gate DPL check of INT n (SDM Vol. 2A INT1).</summary>
    static void Int1(Cpu c, ref Op op) => c.Icebp();

    static void Into(Cpu c, ref Op op)
    {
        if ((c.GetFlags() & RFlags.OF) != 0)
        {
            c.SoftwareInterrupt(Vector.OF, true);
        }
    }

    // ------------------------------------------------------------------ far JMP / CALL

    /// <summary>Far JMP/CALL (direct and indirect), called by Control for those forms.</summary>
    public static bool BindFar(in Instruction ins, ref Op op)
    {
        op.Sub = (byte)(ins.Mnemonic == Mnemonic.Call ? 1 : 0);
        if (ins.Op0Kind is OpKind.FarBranch16 or OpKind.FarBranch32)
        {
            op.Size = (byte)(ins.Op0Kind == OpKind.FarBranch16 ? 2 : 4);
            op.Imm = ins.Op0Kind == OpKind.FarBranch16 ? ins.FarBranch16 : ins.FarBranch32;
            op.Imm2 = ins.FarBranchSelector;
            op.Exec = &FarTransfer.Direct;
            return true;
        }
        if (ins.Op0Kind != OpKind.Memory)
        {
            return false;
        }
        op.Size = (byte)(ins.MemorySize.GetSize() - 2); // m16:16 = 4, m16:32 = 6, m16:64 = 10 bytes
        op.Exec = &FarTransfer.Indirect;
        return true;
    }

    // ------------------------------------------------------------------ IN / OUT

    /// <summary>IN/OUT: Size = access width; Sub bit 0 = port in DX (else Imm); Sub bit 1 = OUT.</summary>
    static bool BindIo(in Instruction ins, ref Op op)
    {
        bool isOut = ins.Mnemonic == Mnemonic.Out;
        Register acc = isOut ? ins.Op1Register : ins.Op0Register;
        bool dx = (isOut ? ins.Op0Kind : ins.Op1Kind) == OpKind.Register;
        op.Size = (byte)acc.GetSize();
        op.Sub = (byte)((dx ? 1 : 0) | (isOut ? 2 : 0));
        op.Exec = isOut ? &Out : &In;
        return true;
    }

    static ushort PortOf(Cpu c, ref Op op) => (op.Sub & 1) != 0 ? (ushort)c.Regs.Gpr[2] : (ushort)op.Imm;

    /// <summary>
    /// I/O permission (SDM Vol. 1 19.5): in protected mode with CPL &gt; IOPL (and always in
    /// virtual-8086 mode) every bit of the TSS I/O bitmap covering the accessed ports must be 0.
    /// </summary>
    public static void CheckIoPermission(Cpu c, ushort port, int size)
    {
        if (c.Mode == CpuMode.Real || (c.Mode != CpuMode.Virtual8086 && c.Cpl <= c.Iopl))
        {
            return;
        }
        ref SegmentRegister tr = ref c.Tr;
        // Only a 32/64-bit TSS (type 9 or 11) has an I/O map base at offset 0x66.
        if (!tr.IsSystem || (tr.Type & 0xD) != 9 || tr.Limit < 0x67)
        {
            throw Denied(c, port);
        }
        uint mapBase = (uint)c.SystemRead(tr.Base + 0x66, 2);
        uint byteOffset = mapBase + (uint)(port >> 3);
        if (byteOffset + 1 > tr.Limit)
        {
            throw Denied(c, port);
        }
        uint bits = (uint)c.SystemRead(tr.Base + byteOffset, 2);
        uint mask = ((1u << size) - 1) << (port & 7);
        if ((bits & mask) != 0)
        {
            throw Denied(c, port);
        }
    }

    static GuestFault Denied(Cpu c, ushort port)
    {
        c.Counters.IoPermissionFaults.IncrementUnsynchronized();
        return c.GeneralProtection(0);
    }

    /// <summary>Reads a port through the platform's port bus (under the device lock when there is one).</summary>
    public static uint PortRead(Cpu c, ushort port, int size)
    {
        if (c.Platform.DeviceLock is { } l)
        {
            lock (l)
            {
                return c.Platform.Ports.Read(port, size);
            }
        }
        return c.Platform.Ports.Read(port, size);
    }

    public static void PortWrite(Cpu c, ushort port, int size, uint value)
    {
        if (c.Platform.DeviceLock is { } l)
        {
            lock (l)
            {
                c.Platform.Ports.Write(port, size, value);
            }
            return;
        }
        c.Platform.Ports.Write(port, size, value);
    }

    static void In(Cpu c, ref Op op)
    {
        ushort port = PortOf(c, ref op);
        CheckIoPermission(c, port, op.Size);
        if (c.IoBreakpointsArmed)
        {
            c.NoteIoAccess(port, op.Size);
        }
        uint v = PortRead(c, port, op.Size);
        switch (op.Size)
        {
            case 1: c.SetReg8(0, (byte)v); break;
            case 2: S16.SetReg(c, 0, v); break;
            default: c.Regs.Gpr[0] = v; break;
        }
    }

    static void Out(Cpu c, ref Op op)
    {
        ushort port = PortOf(c, ref op);
        CheckIoPermission(c, port, op.Size);
        if (c.IoBreakpointsArmed)
        {
            c.NoteIoAccess(port, op.Size);
        }
        uint v = (uint)c.Regs.Gpr[0] & (uint)(op.Size == 4 ? 0xFFFF_FFFF : (1u << (8 * op.Size)) - 1);
        PortWrite(c, port, op.Size, v);
        // A device (APIC via port? PIC, reset register) may have raised an interrupt or a stop.
        c.RecheckInterrupts();
    }
}
