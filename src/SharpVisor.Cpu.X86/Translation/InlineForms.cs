using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Semantics;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// IL of the translator's own for the commonest forms, at 8, 16, 32 and 64 bits: MOV r,r, r,imm,
/// m,imm and between a register and memory; ADD, SUB, AND, OR, XOR, CMP, TEST with register,
/// immediate or memory operands, and INC, DEC; MOVZX/MOVSX, CMOVcc and SETcc; SHL/SHR/SAR of a 32/64-bit
/// register by an immediate; LEA (32/64); PUSH/POP of a
/// register, CALL rel, CALL r/m64, JMP m64 and RET in 64-bit code; JMP rel and Jcc. Memory operands take the software
/// TLB's fast path as pointer arithmetic (<see cref="EmitRead"/>, <see cref="EmitWrite"/>). It
/// computes exactly what the interpreter's handler computes (the same lazy-flag words, see
/// <c>Cpu.Flags.cs</c>); every differential case and random program compares the two.
/// </summary>
/// <remarks>
/// Why not inline the handler, as <see cref="BlockCompiler"/> does for other forms: RyuJIT's time
/// grows with the IL it imports, inlinees included, and a generic handler brings several layers
/// (the form, the operation, the operand size, the flag producer) plus the constant copy of the
/// <see cref="Op"/> the JIT must fold: measured ~75 us of JIT per MOV and ~140 us per ADD. This IL
/// is what remains after that folding, ~10-60 bytes, reading the register file through one byref
/// local. Anything else — LOCK, other operations, the stack outside 64-bit code — keeps the handler.
/// </remarks>
static class InlineForms
{
    const BindingFlags Static = BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public;
    static readonly MethodInfo s_movRR = typeof(DataMove).GetMethod("MovRR", Static)!;
    static readonly MethodInfo s_movRI = typeof(DataMove).GetMethod("MovRI", Static)!;
    static readonly MethodInfo s_movMI = typeof(DataMove).GetMethod("MovMI", Static)!;
    static readonly MethodInfo s_extendR = typeof(DataMove).GetMethod("ExtendR", Static)!;
    static readonly MethodInfo s_cmovR = typeof(DataMove).GetMethod("CmovR", Static)!;
    static readonly MethodInfo s_setccR = typeof(DataMove).GetMethod("SetccR", Static)!;
    static readonly MethodInfo s_shiftR = typeof(Shift).GetMethod("ShiftR", Static)!;
    static readonly MethodInfo s_aluRR = typeof(Alu).GetMethod("RR", Static)!;
    static readonly MethodInfo s_aluRI = typeof(Alu).GetMethod("RI", Static)!;
    static readonly MethodInfo s_aluRM = typeof(Alu).GetMethod("RM", Static)!;
    static readonly MethodInfo s_aluMR = typeof(Alu).GetMethod("MR", Static)!;
    static readonly MethodInfo s_aluMI = typeof(Alu).GetMethod("MI", Static)!;
    static readonly MethodInfo s_jcc = typeof(Control).GetMethod("Jcc", Static)!;
    static readonly MethodInfo s_jmpRel = typeof(Control).GetMethod("JmpRel", Static)!;
    static readonly MethodInfo s_parity = typeof(Cpu).GetMethod(nameof(Cpu.PF))!;
    static readonly MethodInfo s_pushR = typeof(Stack).GetMethod("PushR", Static)!;
    static readonly MethodInfo s_popR = typeof(Stack).GetMethod("PopR", Static)!;
    static readonly MethodInfo s_callRel = typeof(Control).GetMethod("CallRel", Static)!;
    static readonly MethodInfo s_ret = typeof(Control).GetMethod("Ret", Static)!;
    static readonly MethodInfo s_callR = typeof(Control).GetMethod("CallR", Static)!;
    static readonly MethodInfo s_callM = typeof(Control).GetMethod("CallM", Static)!;
    static readonly MethodInfo s_jmpM = typeof(Control).GetMethod("JmpM", Static)!;
    static readonly MethodInfo s_checkStackCanonical = typeof(Cpu).GetMethod("CheckStackCanonical", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly MethodInfo s_lea = typeof(DataMove).GetMethod("Lea", Static)!;
    static readonly MethodInfo s_movRM = typeof(DataMove).GetMethod("MovRM", Static)!;
    static readonly MethodInfo s_movMR = typeof(DataMove).GetMethod("MovMR", Static)!;
    static readonly MethodInfo s_extendM = typeof(DataMove).GetMethod("ExtendM", Static)!;
    static readonly MethodInfo s_readSlow = typeof(Cpu).GetMethod("ReadSlow", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly MethodInfo s_writeSlow = typeof(Cpu).GetMethod("WriteSlow", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly FieldInfo s_dataTlb = typeof(Cpu).GetField(nameof(Cpu.DataTlb))!;
    static readonly FieldInfo s_codePages = typeof(Cpu).GetField(nameof(Cpu.CodePages))!;
    static readonly FieldInfo s_fetchLimitCheck = typeof(Cpu).GetField("_fetchLimitCheck", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly MethodInfo s_checkBranchTargetSlow = typeof(Cpu).GetMethod("CheckNearBranchTargetSlow", BindingFlags.Instance | BindingFlags.NonPublic)!;
    static readonly int s_tlbEntrySize = System.Runtime.CompilerServices.Unsafe.SizeOf<TlbEntry>();
    static readonly int s_readTagOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<TlbEntry>(nameof(TlbEntry.ReadTag));
    static readonly int s_writeTagOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<TlbEntry>(nameof(TlbEntry.WriteTag));
    static readonly int s_hostAddendOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<TlbEntry>(nameof(TlbEntry.HostAddend));
    static readonly int s_ramOffsetOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<TlbEntry>(nameof(TlbEntry.RamOffset));
    static readonly MethodInfo s_checkSegment = typeof(Cpu).GetMethod(nameof(Cpu.CheckSegmentAccess))!;
    static readonly MethodInfo s_maybeNonCanonical = typeof(Cpu).GetMethod(nameof(Cpu.MaybeNonCanonical), Static)!;
    static readonly MethodInfo s_checkCanonical = typeof(Cpu).GetMethod(nameof(Cpu.CheckOperandCanonical))!;
    static readonly FieldInfo s_linearMask = typeof(RegisterFile).GetField(nameof(RegisterFile.LinearMask))!;
    static readonly int s_segBaseOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<RegisterFile>(nameof(RegisterFile.SegBase));
    static readonly int s_segCheckOffset = (int)System.Runtime.InteropServices.Marshal.OffsetOf<RegisterFile>(nameof(RegisterFile.SegCheck));
    static readonly FieldInfo s_regs = typeof(Cpu).GetField(nameof(Cpu.Regs))!;
    static readonly FieldInfo s_rip = typeof(Cpu).GetField(nameof(Cpu.Rip))!;
    static readonly FieldInfo s_flagRes = typeof(RegisterFile).GetField(nameof(RegisterFile.FlagRes))!;
    static readonly FieldInfo s_flagAux = typeof(RegisterFile).GetField(nameof(RegisterFile.FlagAux))!;

    /// <summary>The locals the forms use, declared once per translated method.</summary>
    public sealed class Locals(ILGenerator il)
    {
        /// <summary><c>ref cpu.Regs</c>, set at the method's start (<see cref="Begin"/>).</summary>
        public readonly LocalBuilder Regs = il.DeclareLocal(typeof(RegisterFile).MakeByRefType());
        public readonly LocalBuilder A = il.DeclareLocal(typeof(ulong)), B = il.DeclareLocal(typeof(ulong));
        public readonly LocalBuilder R = il.DeclareLocal(typeof(ulong)), Carries = il.DeclareLocal(typeof(ulong));
        /// <summary>A memory operand's linear address (<see cref="EmitLinear"/>).</summary>
        public readonly LocalBuilder Address = il.DeclareLocal(typeof(ulong));
        /// <summary>The software-TLB entry of an access (<see cref="EmitTlbEntry"/>) and the value a write stores.</summary>
        public readonly LocalBuilder Entry = il.DeclareLocal(typeof(nint)), Value = il.DeclareLocal(typeof(ulong));
        /// <summary>Operands and result of the ADD/SUB/CMP whose CF, AF and OF are <see cref="Pending"/>.</summary>
        public readonly LocalBuilder AuxA = il.DeclareLocal(typeof(ulong)), AuxB = il.DeclareLocal(typeof(ulong)), AuxR = il.DeclareLocal(typeof(ulong));
        /// <summary>At this point of the emission: an addition or subtraction whose FlagAux (CF, AF, OF,
        /// the costly part of its flags) is not stored yet (see <see cref="MaterializeFlags"/>).</summary>
        public PendingAux? Pending;
        /// <summary>Set when the form emitted since it was last cleared writes memory: only a write
        /// (to a page holding code, or the local APIC) can end the block early (set
        /// <see cref="Cpu.ExitBlock"/>) among what these forms do — reads, page walks, branch checks
        /// and register work only fault.</summary>
        public bool WroteMemory;
    }

    /// <summary>
    /// CF, AF and OF of an ADD or SUB (CMP) of <paramref name="Bits"/>-bit operands, to be stored into
    /// <see cref="RegisterFile.FlagAux"/> from <see cref="Locals.AuxA"/>, <see cref="Locals.AuxB"/> and
    /// <see cref="Locals.AuxR"/>.
    /// </summary>
    /// <remarks>
    /// Compiled code keeps most such flags only in case the next instructions fault: <c>add rax, 1;
    /// mov [rbp-8], rax; movzx ecx, byte [rdi+rax]; test ecx, ecx; jne</c> computes CF/AF/OF that the
    /// TEST overwrites, but each memory access in between could raise #PF, whose frame holds RFLAGS.
    /// So the form stores only the result (FlagRes: ZF, SF, PF) and leaves the operands in locals; the
    /// FlagAux store is emitted where something can observe it — on the slow path of a later memory
    /// access or check (before the call that may fault), before a flag reader (a condition other than
    /// ZF, INC/DEC's kept CF), before any handler call, at an early exit and at the block's end —
    /// and not at all when another flag-writing form comes first. Between the form and that point,
    /// FlagAux is stale: nothing but translated code of the same block runs there.
    /// </remarks>
    public readonly record struct PendingAux(bool Subtract, int Bits);

    /// <summary>Stores the pending FlagAux, if any, and forgets it: the flags are architectural again.</summary>
    public static void MaterializeFlags(ILGenerator il, Locals l)
    {
        if (l.Pending is { } pending)
        {
            EmitAuxStore(il, l, pending);
            l.Pending = null;
        }
    }

    /// <summary>Stores <paramref name="pending"/>'s FlagAux, on a path that leaves the emission's state
    /// as it is (a slow path, an early exit): a call of <see cref="StoreCarriedFlags"/>, cold code
    /// whose IL is a quarter of the computation's (the JIT's time goes by IL bytes).</summary>
    public static void EmitPendingFlags(ILGenerator il, Locals l, PendingAux? pending)
    {
        if (pending is { } p)
        {
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldloc, l.AuxA);
            il.Emit(OpCodes.Ldloc, l.AuxB);
            il.Emit(OpCodes.Ldloc, l.AuxR);
            il.Emit(OpCodes.Ldc_I4, p.Bits);
            il.Emit(p.Subtract ? OpCodes.Ldc_I4_1 : OpCodes.Ldc_I4_0);
            il.Emit(OpCodes.Call, s_storeCarriedFlags);
        }
    }

    static readonly MethodInfo s_storeCarriedFlags = typeof(InlineForms).GetMethod(nameof(StoreCarriedFlags))!;

    /// <summary>The flags of <c>r = a + b</c> (or <c>a - b</c>) at <paramref name="bits"/>, by the
    /// interpreter's own <c>Cpu.FlagsAdd</c>/<c>FlagsSub</c>: FlagAux, and FlagRes again with the value
    /// the form stored (no flag writer came between, or the pending flags would be gone).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void StoreCarriedFlags(Cpu cpu, ulong a, ulong b, ulong r, int bits, bool subtract)
    {
        if (subtract)
        {
            cpu.FlagsSub(a, b, r, bits);
        }
        else
        {
            cpu.FlagsAdd(a, b, r, bits);
        }
    }

    static void EmitAuxStore(ILGenerator il, Locals l, PendingAux pending)
    {
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldflda, s_flagAux);
        PushCarriedFlags(il, l.AuxA, l.AuxB, l.AuxR, l.Carries, pending.Subtract, pending.Bits);
        il.Emit(OpCodes.Stind_I8);
    }

    /// <summary>Emits <c>regs = ref cpu.Regs</c> (argument 1 is the vCPU).</summary>
    public static void Begin(ILGenerator il, Locals locals)
    {
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldflda, s_regs);
        il.Emit(OpCodes.Stloc, locals.Regs);
    }

    /// <summary>Emits the instruction when its form is one of these; false (nothing emitted) otherwise.</summary>
    /// <param name="codeBits">The code size the block was decoded for (<see cref="Block.Bits"/>): 64-bit
    /// code has flat segments, so its memory operands need no segment checks.</param>
    /// <param name="setNextRip">Emits the next-RIP slot's setting (RIP + length): called first by
    /// the forms that read or replace the slot — the branches, CALL and RET — and by no other. The
    /// others find RIP committed (a RIP-relative operand is RIP + length, see
    /// <see cref="EmitEffectiveAddress"/>) and leave RIP to the caller.</param>
    public static bool TryEmit(ILGenerator il, Locals l, in Op op, MethodInfo handler, int codeBits, Action setNextRip)
    {
        if (handler == s_jcc || handler == s_jmpRel)
        {
            setNextRip();
            EmitRelativeBranch(il, l, in op, conditional: handler == s_jcc);
            return true;
        }
        if (handler == s_setccR)
        {
            // SETcc r8: 1 or 0 into the byte register (SDM Vol. 2B SETcc)
            EmitRegAddress(il, l, op.R1, 8);
            PushCondition(il, l, op.Sub);
            EndStore(il, 8);
            return true;
        }
        if (!handler.IsGenericMethod)
        {
            return false;
        }
        var definition = handler.GetGenericMethodDefinition();
        var arguments = handler.GetGenericArguments();
        int bits = arguments[0] == typeof(S64) ? 64 : arguments[0] == typeof(S32) ? 32 : arguments[0] == typeof(S16) ? 16 : arguments[0] == typeof(S8) ? 8 : 0;
        if (bits == 0)
        {
            return false;
        }
        if (definition == s_movRR)
        {
            EmitRegAddress(il, l, op.R1, bits);
            LoadReg(il, l, op.R2, bits);
            EndStore(il, bits);
            return true;
        }
        if (definition == s_movRI)
        {
            EmitRegAddress(il, l, op.R1, bits);
            il.Emit(OpCodes.Ldc_I8, (long)op.Imm);
            EndStore(il, bits);
            return true;
        }
        if (definition == s_movMI)
        {
            EmitLinear(il, l, in op, codeBits);
            il.Emit(OpCodes.Ldc_I8, (long)op.Imm);
            EmitWrite(il, l, l.Address, bits / 8, CanonicalCheck.Of(in op));
            return true;
        }
        if (codeBits == 64 && bits == 64 && EmitStackForm(il, l, in op, definition, setNextRip))
        {
            return true;
        }
        if (definition == s_lea && bits >= 32)
        {
            EmitSlotAddress(il, l, op.R1);
            EmitEffectiveAddress(il, l, in op);
            EndStore(il, bits);
            return true;
        }
        if (definition == s_movRM)
        {
            EmitLinear(il, l, in op, codeBits);
            EmitRegAddress(il, l, op.R1, bits);
            EmitRead(il, l, l.Address, bits / 8, CanonicalCheck.Of(in op));
            EndStore(il, bits);
            return true;
        }
        if (definition == s_extendR && op.Aux is 1 or 2 or 4)
        {
            // MOVZX/MOVSX/MOVSXD from a register: its low byte (or AH..BH), word or dword, extended.
            EmitRegAddress(il, l, op.R1, bits);
            LoadReg(il, l, op.R2, op.Aux * 8);
            if (op.Sub != 0)
            {
                SignExtend(il, op.Aux * 8);
            }
            EndStore(il, bits);
            return true;
        }
        if (definition == s_shiftR && op.Sub == 0 && bits >= 32
            && (arguments[1] == typeof(ShShl) || arguments[1] == typeof(ShShr) || arguments[1] == typeof(ShSar)))
        {
            EmitShiftByImmediate(il, l, in op, arguments[1], bits);
            return true;
        }
        if (definition == s_cmovR && bits >= 16)
        {
            // CMOVcc r, r: the source when the condition holds, else the destination's own value — a
            // 32-bit destination is written (zero-extended) either way (SDM Vol. 2A CMOVcc).
            var keep = il.DefineLabel();
            var write = il.DefineLabel();
            PushCondition(il, l, op.Sub);
            il.Emit(OpCodes.Brfalse, keep);
            LoadReg(il, l, op.R2, bits);
            il.Emit(OpCodes.Stloc, l.R);
            il.Emit(OpCodes.Br, write);
            il.MarkLabel(keep);
            LoadReg(il, l, op.R1, bits);
            il.Emit(OpCodes.Stloc, l.R);
            il.MarkLabel(write);
            EmitRegAddress(il, l, op.R1, bits);
            il.Emit(OpCodes.Ldloc, l.R);
            EndStore(il, bits);
            return true;
        }
        if (definition == s_extendM && op.Aux is 1 or 2 or 4)
        {
            // MOVZX/MOVSX/MOVSXD from memory: a byte, word or dword, zero- or sign-extended (Sub 1).
            EmitLinear(il, l, in op, codeBits);
            EmitRegAddress(il, l, op.R1, bits);
            EmitRead(il, l, l.Address, op.Aux, CanonicalCheck.Of(in op)); // zero-extended
            if (op.Sub != 0)
            {
                SignExtend(il, op.Aux * 8);
            }
            EndStore(il, bits);
            return true;
        }
        if (definition == s_movMR)
        {
            EmitLinear(il, l, in op, codeBits);
            LoadReg(il, l, op.R2, bits);
            EmitWrite(il, l, l.Address, bits / 8, CanonicalCheck.Of(in op));
            return true;
        }
        // The ALU forms: RR and RI (flag update by choice), RM, MR and MI (flags always; MR and MI
        // write memory unless they only compare). LOCKed forms have handlers of their own.
        bool memorySource = definition == s_aluRM;
        bool memoryDestination = definition == s_aluMR || definition == s_aluMI;
        if (definition != s_aluRR && definition != s_aluRI && !memorySource && !memoryDestination)
        {
            return false;
        }
        Type operation = arguments[1];
        var kind = operation == typeof(OpAdd) ? Kind.Add
            : operation == typeof(OpSub) || operation == typeof(OpCmp) ? Kind.Sub
            : operation == typeof(OpAnd) || operation == typeof(OpTest) ? Kind.And
            : operation == typeof(OpOr) ? Kind.Or
            : operation == typeof(OpXor) ? Kind.Xor
            : operation == typeof(OpInc) && (definition == s_aluRI || definition == s_aluMI) ? Kind.Inc
            : operation == typeof(OpDec) && (definition == s_aluRI || definition == s_aluMI) ? Kind.Dec
            : Kind.None;
        if (kind == Kind.None)
        {
            return false;
        }
        bool writesResult = operation != typeof(OpCmp) && operation != typeof(OpTest);
        bool updatesFlags = arguments.Length < 3 || arguments[2] == typeof(UpdateFlags);
        ulong mask = bits == 64 ? ulong.MaxValue : (1UL << bits) - 1;

        // a = R1 or memory, b = R2, the immediate or memory, r = a op b (masked to the width)
        if (memorySource || memoryDestination)
        {
            EmitLinear(il, l, in op, codeBits);
        }
        if (memoryDestination)
        {
            EmitRead(il, l, l.Address, bits / 8, CanonicalCheck.Of(in op));
        }
        else
        {
            LoadReg(il, l, op.R1, bits);
        }
        il.Emit(OpCodes.Stloc, l.A);
        if (definition == s_aluRR || definition == s_aluMR)
        {
            LoadReg(il, l, op.R2, bits);
        }
        else if (memorySource)
        {
            EmitRead(il, l, l.Address, bits / 8, CanonicalCheck.Of(in op));
        }
        else
        {
            // INC and DEC bind the immediate form with an unused immediate; their operand is 1.
            il.Emit(OpCodes.Ldc_I8, kind is Kind.Inc or Kind.Dec ? 1L : (long)(op.Imm & mask));
        }
        il.Emit(OpCodes.Stloc, l.B);
        il.Emit(OpCodes.Ldloc, l.A);
        il.Emit(OpCodes.Ldloc, l.B);
        il.Emit(kind switch { Kind.Add or Kind.Inc => OpCodes.Add, Kind.Sub or Kind.Dec => OpCodes.Sub, Kind.And => OpCodes.And, Kind.Or => OpCodes.Or, _ => OpCodes.Xor });
        ZeroExtend(il, bits);
        il.Emit(OpCodes.Stloc, l.R);
        // The result, then the flags, as the interpreter's handler does: a store to memory that
        // faults leaves the flags as they were (a register write cannot fault).
        if (writesResult && memoryDestination)
        {
            il.Emit(OpCodes.Ldloc, l.R);
            EmitWrite(il, l, l.Address, bits / 8, CanonicalCheck.None); // the read before checked the address
        }
        else if (writesResult)
        {
            EmitRegAddress(il, l, op.R1, bits);
            il.Emit(OpCodes.Ldloc, l.R);
            EndStore(il, bits);
        }
        if (updatesFlags)
        {
            EmitFlags(il, l, kind, bits);
        }
        return true;
    }

    // The software TLB's fast path (Cpu.Memory.cs: Read8..Read64, Write8..Write64) as plain pointer
    // arithmetic over the current data TLB (Cpu.DataTlb) rather than calls for the JIT to inline:
    // importing those calls, the array of TLB entries and their bounds checks cost the JIT ~150 us
    // per memory access (the translate benchmark's load went from 330 to ~100 us of compile time).
    // The slow paths are the same methods the inlined calls end in, so every miss, fault, MMIO
    // access, alignment check and write to a code page behaves as before.

    /// <summary>Leaves in <see cref="Locals.Entry"/> the address of the data TLB entry for the
    /// linear address in <paramref name="address"/>.</summary>
    static void EmitTlbEntry(ILGenerator il, Locals l, LocalBuilder address)
    {
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldfld, s_dataTlb);
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Ldc_I4, 12);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Conv_I4);
        il.Emit(OpCodes.Ldc_I4, Cpu.TlbSize - 1);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Ldc_I4, s_tlbEntrySize);
        il.Emit(OpCodes.Mul);
        il.Emit(OpCodes.Conv_I);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Stloc, l.Entry);
    }

    /// <summary>Branches to <paramref name="slow"/> unless the entry's tag at <paramref name="tagOffset"/>
    /// is the page of <paramref name="address"/> and a <paramref name="size"/>-byte access there stays
    /// within the page: one compare of the tag with the page of the access's last byte, which is
    /// another page — never the entry's, as consecutive pages have different entries — exactly
    /// when the access crosses into the next one.</summary>
    static void EmitTagCheck(ILGenerator il, Locals l, LocalBuilder address, int tagOffset, int size, Label slow)
    {
        il.Emit(OpCodes.Ldloc, l.Entry);
        il.Emit(OpCodes.Ldc_I4, tagOffset);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ldind_I8);
        il.Emit(OpCodes.Ldloc, address);
        if (size > 1)
        {
            il.Emit(OpCodes.Ldc_I8, (long)(size - 1));
            il.Emit(OpCodes.Add);
        }
        il.Emit(OpCodes.Ldc_I8, ~0xFFFL);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Bne_Un, slow);
    }

    /// <summary>Pushes the host address of <paramref name="address"/> through the entry: HostAddend + la.</summary>
    static void EmitHostPointer(ILGenerator il, Locals l, LocalBuilder address)
    {
        il.Emit(OpCodes.Ldloc, l.Entry);
        il.Emit(OpCodes.Ldc_I4, s_hostAddendOffset);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ldind_I8);
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Conv_I);
    }

    /// <summary>
    /// The canonical-address check of an access (Cpu.Canonical.cs): #SS(0) or #GP(0) unless every byte
    /// is canonical. Translated code makes it on the slow path only: the TLB holds pages of canonical
    /// addresses alone (the page walker raises #GP before it would fill one for any other), and an
    /// access that hits stays within its page, so it is canonical. The slow path checks first, then
    /// calls <c>ReadSlow</c>/<c>WriteSlow</c> — the interpreter's order.
    /// </summary>
    readonly record struct CanonicalCheck(bool Needed, bool Stack, byte BaseSlot, OpFlags Flags)
    {
        public static readonly CanonicalCheck None = default;
        /// <summary>An implicit stack access (push, pop, call, return): #SS(0).</summary>
        public static readonly CanonicalCheck StackAccess = new(true, true, 0, OpFlags.None);
        /// <summary>An explicit memory operand: #SS(0) or #GP(0) by its base register (<see cref="Cpu.CheckOperandCanonical"/>).</summary>
        public static CanonicalCheck Of(in Op op) => new(true, false, op.Base, op.Flags);
    }

    /// <summary>On a slow path: <c>if (Cpu.MaybeNonCanonical(address, size))</c> the check.</summary>
    static void EmitCanonicalCheck(ILGenerator il, LocalBuilder address, int size, CanonicalCheck check)
    {
        if (!check.Needed)
        {
            return;
        }
        var canonical = BeginCanonicalCheck(il, address, size);
        if (check.Stack)
        {
            il.Emit(OpCodes.Call, s_checkStackCanonical);
        }
        else
        {
            il.Emit(OpCodes.Ldc_I4, (int)check.BaseSlot);
            il.Emit(OpCodes.Ldc_I4, (int)check.Flags);
            il.Emit(OpCodes.Call, s_checkCanonical);
        }
        il.MarkLabel(canonical);
    }

    /// <summary>Pushes the <paramref name="size"/>-byte value at linear <paramref name="address"/>,
    /// zero-extended to 64 bits: <c>Cpu.Read8</c>..<c>Read64</c>, after <paramref name="check"/>.</summary>
    static void EmitRead(ILGenerator il, Locals l, LocalBuilder address, int size, CanonicalCheck check)
    {
        var slow = il.DefineLabel();
        var done = il.DefineLabel();
        EmitTlbEntry(il, l, address);
        EmitTagCheck(il, l, address, s_readTagOffset, size, slow);
        EmitHostPointer(il, l, address);
        il.Emit(size switch { 1 => OpCodes.Ldind_U1, 2 => OpCodes.Ldind_U2, 4 => OpCodes.Ldind_U4, _ => OpCodes.Ldind_I8 });
        if (size < 8)
        {
            il.Emit(OpCodes.Conv_U8);
        }
        il.Emit(OpCodes.Stloc, l.Value);
        il.Emit(OpCodes.Br, done);
        il.MarkLabel(slow);
        EmitPendingFlags(il, l, l.Pending); // the slow path may fault
        EmitCanonicalCheck(il, address, size, check);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Ldc_I4, size);
        il.Emit(OpCodes.Ldc_I8, (long)(size - 1)); // the alignment mask
        il.Emit(OpCodes.Call, s_readSlow);
        il.Emit(OpCodes.Stloc, l.Value);
        il.MarkLabel(done);
        il.Emit(OpCodes.Ldloc, l.Value);
    }

    /// <summary>Writes the low <paramref name="size"/> bytes of the 64-bit value on the stack to linear
    /// <paramref name="address"/>: <c>Cpu.Write8</c>..<c>Write64</c>, whose fast path also leaves
    /// out pages holding decoded code (their writes go through the slow path's invalidation); after
    /// <paramref name="check"/>.</summary>
    static void EmitWrite(ILGenerator il, Locals l, LocalBuilder address, int size, CanonicalCheck check)
    {
        l.WroteMemory = true;
        var slow = il.DefineLabel();
        var done = il.DefineLabel();
        il.Emit(OpCodes.Stloc, l.Value);
        EmitTlbEntry(il, l, address);
        EmitTagCheck(il, l, address, s_writeTagOffset, size, slow);
        // if (cpu.CodePages[entry.RamOffset >> 12] != 0) slow
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldfld, s_codePages);
        il.Emit(OpCodes.Ldloc, l.Entry);
        il.Emit(OpCodes.Ldc_I4, s_ramOffsetOffset);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ldind_I8);
        il.Emit(OpCodes.Ldc_I4, 12);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Conv_I);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ldind_U1);
        il.Emit(OpCodes.Brtrue, slow);
        EmitHostPointer(il, l, address);
        il.Emit(OpCodes.Ldloc, l.Value);
        il.Emit(size switch { 1 => OpCodes.Stind_I1, 2 => OpCodes.Stind_I2, 4 => OpCodes.Stind_I4, _ => OpCodes.Stind_I8 });
        il.Emit(OpCodes.Br, done);
        il.MarkLabel(slow);
        EmitPendingFlags(il, l, l.Pending); // the slow path may fault
        EmitCanonicalCheck(il, address, size, check);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Ldc_I4, size);
        il.Emit(OpCodes.Ldc_I8, (long)(size - 1));
        il.Emit(OpCodes.Ldloc, l.Value);
        il.Emit(OpCodes.Call, s_writeSlow);
        il.MarkLabel(done);
    }

    /// <summary>
    /// <c>Cpu.CheckNearBranchTarget</c> of the target in <paramref name="target"/>: one test inline,
    /// the CS limit and canonical checks out of line (#GP(0) from there).
    /// </summary>
    static void EmitBranchTargetCheck(ILGenerator il, Locals l, LocalBuilder target)
    {
        var fine = il.DefineLabel();
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldfld, s_fetchLimitCheck);
        il.Emit(OpCodes.Ldloc, target);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.Call, s_maybeNonCanonical);
        il.Emit(OpCodes.Or);
        il.Emit(OpCodes.Brfalse, fine);
        EmitPendingFlags(il, l, l.Pending); // #GP from here
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, target);
        il.Emit(OpCodes.Call, s_checkBranchTargetSlow);
        il.MarkLabel(fine);
    }

    /// <summary>The operation; INC and DEC are ADD and SUB of 1 that keep CF (SDM Vol. 2A INC, DEC).</summary>
    enum Kind { None, Add, Sub, And, Or, Xor, Inc, Dec }

    /// <summary>
    /// PUSH r64, POP r64, CALL rel, CALL r/m64, JMP m64 and RET in 64-bit code, where the stack is flat and 64 bits wide:
    /// what <c>Cpu.Push</c>, <c>PeekStack</c> and <c>AdjustStack</c> do there — the canonical check of
    /// the stack address (#SS), the access, then RSP; a branch target is checked before RIP changes.
    /// </summary>
    static bool EmitStackForm(ILGenerator il, Locals l, in Op op, MethodInfo definition, Action setNextRip)
    {
        if (definition == s_pushR)
        {
            LoadReg(il, l, op.R1, 64); // PUSH RSP pushes the value before the decrement
            il.Emit(OpCodes.Stloc, l.B);
            EmitPush(il, l);
            return true;
        }
        if (definition == s_popR)
        {
            EmitStackTop(il, l); // value in B, RSP in A
            EmitSlotAddress(il, l, 4);
            il.Emit(OpCodes.Ldloc, l.A);
            il.Emit(OpCodes.Ldc_I4_8);
            il.Emit(OpCodes.Conv_I8);
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Stind_I8);
            EmitSlotAddress(il, l, op.R1); // POP RSP loads the popped value, after the increment
            il.Emit(OpCodes.Ldloc, l.B);
            il.Emit(OpCodes.Stind_I8);
            return true;
        }
        if (definition == s_callRel)
        {
            setNextRip();
            // target = (next RIP + displacement) & mask, checked before the push
            EmitSlotAddress(il, l, RegisterFile.NextRip);
            il.Emit(OpCodes.Ldind_I8);
            il.Emit(OpCodes.Stloc, l.B);
            il.Emit(OpCodes.Ldloc, l.B);
            il.Emit(OpCodes.Ldc_I8, (long)op.Imm);
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Ldc_I8, (long)op.AddrMask);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Stloc, l.R);
            EmitBranchTargetCheck(il, l, l.R);
            EmitPush(il, l);
            EmitSlotAddress(il, l, RegisterFile.NextRip);
            il.Emit(OpCodes.Ldloc, l.R);
            il.Emit(OpCodes.Stind_I8);
            return true;
        }
        if (definition == s_callR || definition == s_callM || definition == s_jmpM)
        {
            // CALL r/m64, JMP m64: the target (a register, or read first: a fault leaves RSP alone),
            // checked, then for CALL the next RIP pushed; then the next-RIP slot replaced.
            setNextRip();
            if (definition == s_callR)
            {
                LoadReg(il, l, op.R1, 64);
            }
            else
            {
                EmitLinear(il, l, in op, 64);
                EmitRead(il, l, l.Address, 8, CanonicalCheck.Of(in op));
            }
            il.Emit(OpCodes.Stloc, l.R);
            EmitBranchTargetCheck(il, l, l.R);
            if (definition != s_jmpM)
            {
                EmitSlotAddress(il, l, RegisterFile.NextRip);
                il.Emit(OpCodes.Ldind_I8);
                il.Emit(OpCodes.Stloc, l.B);
                EmitPush(il, l);
            }
            EmitSlotAddress(il, l, RegisterFile.NextRip);
            il.Emit(OpCodes.Ldloc, l.R);
            il.Emit(OpCodes.Stind_I8);
            return true;
        }
        if (definition == s_ret)
        {
            setNextRip();
            EmitStackTop(il, l);
            EmitBranchTargetCheck(il, l, l.B);
            EmitSlotAddress(il, l, 4);
            il.Emit(OpCodes.Ldloc, l.A);
            il.Emit(OpCodes.Ldc_I8, 8 + (long)op.Imm); // RET imm16 releases that many more bytes
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Stind_I8);
            EmitSlotAddress(il, l, RegisterFile.NextRip);
            il.Emit(OpCodes.Ldloc, l.B);
            il.Emit(OpCodes.Stind_I8);
            return true;
        }
        return false;
    }

    /// <summary>Pushes <see cref="Locals.B"/>: RSP - 8 checked, written, then RSP updated.</summary>
    static void EmitPush(ILGenerator il, Locals l)
    {
        LoadReg(il, l, 4, 64);
        il.Emit(OpCodes.Ldc_I4_8);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.Sub);
        il.Emit(OpCodes.Stloc, l.A);
        il.Emit(OpCodes.Ldloc, l.B);
        EmitWrite(il, l, l.A, 8, CanonicalCheck.StackAccess);
        EmitSlotAddress(il, l, 4);
        il.Emit(OpCodes.Ldloc, l.A);
        il.Emit(OpCodes.Stind_I8);
    }

    /// <summary>The quadword at the top of the stack into <see cref="Locals.B"/>, RSP into <see cref="Locals.A"/>.</summary>
    static void EmitStackTop(ILGenerator il, Locals l)
    {
        LoadReg(il, l, 4, 64);
        il.Emit(OpCodes.Stloc, l.A);
        EmitRead(il, l, l.A, 8, CanonicalCheck.StackAccess);
        il.Emit(OpCodes.Stloc, l.B);
    }

    /// <summary>
    /// The one test <c>Cpu.MaybeNonCanonical(address, size)</c> that keeps the canonical check out of
    /// the common path; when it holds, leaves <c>cpu, address, size</c> pushed for the caller's check,
    /// which it follows with the returned label.
    /// </summary>
    static Label BeginCanonicalCheck(ILGenerator il, LocalBuilder address, int size)
    {
        var canonical = il.DefineLabel();
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Ldc_I4, size);
        il.Emit(OpCodes.Call, s_maybeNonCanonical);
        il.Emit(OpCodes.Brfalse, canonical);
        il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, address);
        il.Emit(OpCodes.Ldc_I4, size);
        return canonical;
    }

    /// <summary>Pushes the memory operand's effective address: (base + (index &lt;&lt; scale) + disp) masked to
    /// the address size, as <see cref="Op.Offset"/>; absent registers (the zero slot) are left out.</summary>
    static void EmitEffectiveAddress(ILGenerator il, Locals l, in Op op)
    {
        bool any = false;
        if (op.Base == RegisterFile.NextRip)
        {
            // RIP-relative: the next instruction's address, RIP + length (RIP is committed before any
            // instruction with a memory operand; the next-RIP slot is not set for these forms).
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldfld, s_rip);
            il.Emit(OpCodes.Ldc_I8, (long)op.Len);
            il.Emit(OpCodes.Add);
            any = true;
        }
        else if (op.Base != RegisterFile.Zero)
        {
            EmitSlotAddress(il, l, op.Base);
            il.Emit(OpCodes.Ldind_I8);
            any = true;
        }
        if (op.Index != RegisterFile.Zero)
        {
            EmitSlotAddress(il, l, op.Index);
            il.Emit(OpCodes.Ldind_I8);
            if (op.Scale != 0)
            {
                il.Emit(OpCodes.Ldc_I4, (int)op.Scale);
                il.Emit(OpCodes.Shl);
            }
            if (any)
            {
                il.Emit(OpCodes.Add);
            }
            any = true;
        }
        il.Emit(OpCodes.Ldc_I8, op.Disp);
        if (any)
        {
            il.Emit(OpCodes.Add);
        }
        if (op.AddrMask != ulong.MaxValue)
        {
            il.Emit(OpCodes.Ldc_I8, (long)op.AddrMask);
            il.Emit(OpCodes.And);
        }
    }

    /// <summary>
    /// Leaves the memory operand's linear address in <see cref="Locals.Address"/>, with the checks of
    /// <see cref="Op.Linear"/>: the segment's limit and type when its <see cref="RegisterFile.SegCheck"/>
    /// says so (never in 64-bit code, where the segments are flat). The canonical check comes with
    /// the access, on its slow path (<see cref="CanonicalCheck"/>).
    /// </summary>
    static void EmitLinear(ILGenerator il, Locals l, in Op op, int codeBits)
    {
        EmitEffectiveAddress(il, l, in op);
        il.Emit(OpCodes.Stloc, l.B);
        bool flat = codeBits == 64 && op.Seg is (byte)Seg.ES or (byte)Seg.CS or (byte)Seg.SS or (byte)Seg.DS or (byte)Seg.None;
        if (codeBits != 64)
        {
            // if (regs.SegCheck[seg] != 0) cpu.CheckSegmentAccess(seg, ea, size, access)
            var unchecked_ = il.DefineLabel();
            il.Emit(OpCodes.Ldloc, l.Regs);
            il.Emit(OpCodes.Ldc_I4, s_segCheckOffset + op.Seg);
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Ldind_U1);
            il.Emit(OpCodes.Brfalse, unchecked_);
            EmitPendingFlags(il, l, l.Pending); // #GP or #SS from here
            il.Emit(OpCodes.Ldarg_1);
            il.Emit(OpCodes.Ldc_I4, (int)op.Seg);
            il.Emit(OpCodes.Ldloc, l.B);
            il.Emit(OpCodes.Ldc_I4, (int)op.MemSize);
            il.Emit(OpCodes.Ldc_I4, (int)op.MemAccess);
            il.Emit(OpCodes.Call, s_checkSegment);
            il.MarkLabel(unchecked_);
        }
        il.Emit(OpCodes.Ldloc, l.B);
        if (!flat)
        {
            // (regs.SegBase[seg] + ea) & regs.LinearMask
            il.Emit(OpCodes.Ldloc, l.Regs);
            il.Emit(OpCodes.Ldc_I4, s_segBaseOffset + op.Seg * sizeof(ulong));
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Ldind_I8);
            il.Emit(OpCodes.Add);
            il.Emit(OpCodes.Ldloc, l.Regs);
            il.Emit(OpCodes.Ldfld, s_linearMask);
            il.Emit(OpCodes.And);
        }
        il.Emit(OpCodes.Stloc, l.Address);
    }

    /// <summary>
    /// JMP rel and Jcc rel: when taken (Jcc: its condition, SDM Vol. 1 B.1, from the lazy flags), what
    /// the interpreter's <see cref="Control.Branch"/> does with (next RIP + displacement) masked to the
    /// operand size: the target checked, then the next-RIP slot replaced.
    /// </summary>
    static void EmitRelativeBranch(ILGenerator il, Locals l, in Op op, bool conditional)
    {
        var notTaken = il.DefineLabel();
        if (conditional)
        {
            PushCondition(il, l, op.Sub);
            il.Emit(OpCodes.Brfalse, notTaken);
        }
        EmitSlotAddress(il, l, RegisterFile.NextRip);
        il.Emit(OpCodes.Ldind_I8);
        il.Emit(OpCodes.Ldc_I8, (long)op.Imm);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ldc_I8, (long)op.AddrMask);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Stloc, l.B);
        EmitBranchTargetCheck(il, l, l.B);
        EmitSlotAddress(il, l, RegisterFile.NextRip);
        il.Emit(OpCodes.Ldloc, l.B);
        il.Emit(OpCodes.Stind_I8);
        il.MarkLabel(notTaken);
    }

    /// <summary>
    /// SHL, SHR and SAR of a 32- or 64-bit register by an immediate, whose masked count is known
    /// here: what <c>ShShl</c>, <c>ShShr</c> and <c>ShSar</c> compute (Semantics/Shift.cs) — CF the
    /// last bit shifted out, OF as those define it (the SDM defines it for a count of 1 only), AF 0.
    /// A masked count of 0 changes no flag but still writes the register (zero-extending a 32-bit one).
    /// </summary>
    static void EmitShiftByImmediate(ILGenerator il, Locals l, in Op op, Type shift, int bits)
    {
        int n = (int)op.Imm & (bits == 64 ? 63 : 31);
        LoadReg(il, l, op.R1, bits);
        il.Emit(OpCodes.Stloc, l.A);
        if (n == 0)
        {
            il.Emit(OpCodes.Ldloc, l.A);
            il.Emit(OpCodes.Stloc, l.R);
        }
        else
        {
            bool arithmetic = shift == typeof(ShSar);
            if (arithmetic)
            {
                // the operand sign-extended from its width, in B
                il.Emit(OpCodes.Ldloc, l.A);
                SignExtend(il, bits);
                il.Emit(OpCodes.Stloc, l.B);
            }
            // r
            il.Emit(OpCodes.Ldloc, arithmetic ? l.B : l.A);
            il.Emit(OpCodes.Ldc_I4, n);
            il.Emit(shift == typeof(ShShl) ? OpCodes.Shl : arithmetic ? OpCodes.Shr : OpCodes.Shr_Un);
            ZeroExtend(il, bits);
            il.Emit(OpCodes.Stloc, l.R);
            // CF: SHL the bit at (width - n); SHR/SAR the bit at n - 1
            il.Emit(OpCodes.Ldloc, arithmetic ? l.B : l.A);
            il.Emit(OpCodes.Ldc_I4, shift == typeof(ShShl) ? bits - n : n - 1);
            il.Emit(arithmetic ? OpCodes.Shr : OpCodes.Shr_Un);
            il.Emit(OpCodes.Ldc_I4_1);
            il.Emit(OpCodes.Conv_I8);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Stloc, l.Carries);
            // FlagAux = CF | OF << 11, with OF: SHL msb(r) ^ CF; SHR msb(a) for n = 1, else msb(r) ^ msb(a); SAR 0
            il.Emit(OpCodes.Ldloc, l.Regs);
            il.Emit(OpCodes.Ldflda, s_flagAux);
            il.Emit(OpCodes.Ldloc, l.Carries);
            if (!arithmetic)
            {
                if (shift == typeof(ShShl))
                {
                    PushMsb(il, l.R, bits);
                    il.Emit(OpCodes.Ldloc, l.Carries);
                    il.Emit(OpCodes.Xor);
                }
                else if (n == 1)
                {
                    PushMsb(il, l.A, bits);
                }
                else
                {
                    PushMsb(il, l.R, bits);
                    PushMsb(il, l.A, bits);
                    il.Emit(OpCodes.Xor);
                }
                il.Emit(OpCodes.Ldc_I4, 11);
                il.Emit(OpCodes.Shl);
                il.Emit(OpCodes.Or);
            }
            il.Emit(OpCodes.Stind_I8);
            l.Pending = null; // FlagAux written whole
            EmitFlagResult(il, l, bits);
        }
        EmitRegAddress(il, l, op.R1, bits);
        il.Emit(OpCodes.Ldloc, l.R);
        EndStore(il, bits);
    }

    /// <summary>Pushes bit (width - 1) of <paramref name="value"/> as a 64-bit 0 or 1.</summary>
    static void PushMsb(ILGenerator il, LocalBuilder value, int bits)
    {
        il.Emit(OpCodes.Ldloc, value);
        il.Emit(OpCodes.Ldc_I4, bits - 1);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.And);
    }

    /// <summary>Pushes condition <paramref name="cc"/> (SDM Vol. 1 B.1; <c>Cpu.Condition</c>) as 1 or 0,
    /// from the lazy flags: codes in pairs, the odd one the negation of the even one.</summary>
    static void PushCondition(ILGenerator il, Locals l, int cc)
    {
        if (cc >> 1 != 2)
        {
            MaterializeFlags(il, l); // all but ZF read FlagAux (CF, OF; SF's and PF's inverter bits)
        }
        switch (cc >> 1)
        {
            case 0: PushOF(il, l); break;
            case 1: PushCF(il, l); break;
            case 2: PushZF(il, l); break;
            case 3: PushCF(il, l); PushZF(il, l); il.Emit(OpCodes.Or); break;
            case 4: PushSF(il, l); break;
            case 5: il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Call, s_parity); break;
            case 6: PushSF(il, l); PushOF(il, l); il.Emit(OpCodes.Xor); break;
            default: PushZF(il, l); PushSF(il, l); PushOF(il, l); il.Emit(OpCodes.Xor); il.Emit(OpCodes.Or); break;
        }
        if ((cc & 1) != 0)
        {
            il.Emit(OpCodes.Ldc_I4_1);
            il.Emit(OpCodes.Xor);
        }
    }

    // The arithmetic flags as 0 or 1 from the lazy words (Cpu.Flags.cs).
    static void PushCF(ILGenerator il, Locals l) => PushAuxBit(il, l, 0);
    static void PushOF(ILGenerator il, Locals l) => PushAuxBit(il, l, 11);

    static void PushAuxBit(ILGenerator il, Locals l, int bit)
    {
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldfld, s_flagAux);
        if (bit != 0)
        {
            il.Emit(OpCodes.Ldc_I4, bit);
            il.Emit(OpCodes.Shr_Un);
        }
        il.Emit(OpCodes.Conv_I4);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.And);
    }

    static void PushZF(ILGenerator il, Locals l)
    {
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldfld, s_flagRes);
        il.Emit(OpCodes.Ldc_I4_0);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.Ceq);
    }

    /// <summary>SF = bit 63 of the result, inverted by bit 7 of FlagAux.</summary>
    static void PushSF(ILGenerator il, Locals l)
    {
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldfld, s_flagRes);
        il.Emit(OpCodes.Ldc_I4, 63);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldfld, s_flagAux);
        il.Emit(OpCodes.Ldc_I4_7);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Xor);
        il.Emit(OpCodes.Conv_I4);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.And);
    }

    /// <summary>
    /// FlagRes = r sign-extended; FlagAux from the carries (ADD) or borrows (SUB, CMP) out of each bit:
    /// CF = out of the top bit, OF = CF xor out of the bit below, AF = out of bit 3 — what
    /// <c>Cpu.FlagsAdd</c>/<c>FlagsSub</c> compute; 0 for the logical operations (<c>FlagsLogic</c>).
    /// </summary>
    static void EmitFlags(ILGenerator il, Locals l, Kind kind, int bits)
    {
        EmitFlagResult(il, l, bits);
        if (kind is Kind.Add or Kind.Sub)
        {
            // CF, AF and OF wait until something can observe them (see PendingAux); an earlier
            // pending addition is overwritten unseen.
            il.Emit(OpCodes.Ldloc, l.A);
            il.Emit(OpCodes.Stloc, l.AuxA);
            il.Emit(OpCodes.Ldloc, l.B);
            il.Emit(OpCodes.Stloc, l.AuxB);
            il.Emit(OpCodes.Ldloc, l.R);
            il.Emit(OpCodes.Stloc, l.AuxR);
            l.Pending = new PendingAux(kind == Kind.Sub, bits);
            return;
        }
        if (kind is Kind.Inc or Kind.Dec)
        {
            MaterializeFlags(il, l); // INC and DEC keep the CF before them
        }
        l.Pending = null; // FlagAux is written whole below
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldflda, s_flagAux);
        if (kind is Kind.Inc or Kind.Dec)
        {
            // the old CF, kept
            il.Emit(OpCodes.Ldloc, l.Regs);
            il.Emit(OpCodes.Ldfld, s_flagAux);
            il.Emit(OpCodes.Ldc_I4_1);
            il.Emit(OpCodes.Conv_I8);
            il.Emit(OpCodes.And);
        }
        if (kind is not (Kind.Inc or Kind.Dec))
        {
            il.Emit(OpCodes.Ldc_I4_0);
            il.Emit(OpCodes.Conv_I8);
            il.Emit(OpCodes.Stind_I8);
            return;
        }
        PushCarriedFlags(il, l.A, l.B, l.R, l.Carries, kind == Kind.Dec, bits);
        // CF computed is dropped for the old one below it on the stack
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.Not);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Or);
        il.Emit(OpCodes.Stind_I8);
    }

    /// <summary>Pushes CF | AF | OF at their RFLAGS positions (Cpu.Flags.cs) of <c>r = a + b</c> or,
    /// with <paramref name="subtract"/>, <c>r = a - b</c>, for <paramref name="bits"/>-bit operands.</summary>
    static void PushCarriedFlags(ILGenerator il, LocalBuilder a, LocalBuilder b, LocalBuilder r, LocalBuilder carries, bool subtract, int bits)
    {
        if (!subtract)
        {
            // carries = (a & b) | ((a | b) & ~r)
            il.Emit(OpCodes.Ldloc, a);
            il.Emit(OpCodes.Ldloc, b);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Ldloc, a);
            il.Emit(OpCodes.Ldloc, b);
            il.Emit(OpCodes.Or);
            il.Emit(OpCodes.Ldloc, r);
            il.Emit(OpCodes.Not);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Or);
        }
        else
        {
            // borrows = (~a & b) | ((~a | b) & r)
            il.Emit(OpCodes.Ldloc, a);
            il.Emit(OpCodes.Not);
            il.Emit(OpCodes.Ldloc, b);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Ldloc, a);
            il.Emit(OpCodes.Not);
            il.Emit(OpCodes.Ldloc, b);
            il.Emit(OpCodes.Or);
            il.Emit(OpCodes.Ldloc, r);
            il.Emit(OpCodes.And);
            il.Emit(OpCodes.Or);
        }
        il.Emit(OpCodes.Stloc, carries);
        int top = bits - 1;
        // CF = the carry out of the top bit
        PushMsb(il, carries, bits);
        // | (carries << 1) & AF
        il.Emit(OpCodes.Ldloc, carries);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.Shl);
        il.Emit(OpCodes.Ldc_I4, (int)RFlags.AF);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Or);
        // | ((carries >> top ^ carries >> (top - 1)) & 1) << 11
        il.Emit(OpCodes.Ldloc, carries);
        il.Emit(OpCodes.Ldc_I4, top);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Ldloc, carries);
        il.Emit(OpCodes.Ldc_I4, top - 1);
        il.Emit(OpCodes.Shr_Un);
        il.Emit(OpCodes.Xor);
        il.Emit(OpCodes.Ldc_I4_1);
        il.Emit(OpCodes.Conv_I8);
        il.Emit(OpCodes.And);
        il.Emit(OpCodes.Ldc_I4, 11);
        il.Emit(OpCodes.Shl);
        il.Emit(OpCodes.Or);
    }

    /// <summary>Pushes general register <paramref name="slot"/> at the width, zero-extended to 64 bits
    /// (at 8 bits, slots from <see cref="RegisterFile.HighByteBase"/> are AH, CH, DH and BH).</summary>
    static void LoadReg(ILGenerator il, Locals l, int slot, int bits)
    {
        EmitRegAddress(il, l, slot, bits);
        il.Emit(bits switch { 8 => OpCodes.Ldind_U1, 16 => OpCodes.Ldind_U2, 32 => OpCodes.Ldind_U4, _ => OpCodes.Ldind_I8 });
        if (bits < 64)
        {
            il.Emit(OpCodes.Conv_U8);
        }
    }

    /// <summary>FlagRes = <see cref="Locals.R"/> sign-extended from the width, as <c>Cpu.FlagsResult</c>
    /// and its kin store it (ZF, SF and PF are read from it).</summary>
    static void EmitFlagResult(ILGenerator il, Locals l, int bits)
    {
        il.Emit(OpCodes.Ldloc, l.Regs);
        il.Emit(OpCodes.Ldflda, s_flagRes);
        il.Emit(OpCodes.Ldloc, l.R);
        SignExtend(il, bits);
        il.Emit(OpCodes.Stind_I8);
    }

    /// <summary>Sign-extends the low <paramref name="bits"/> of the 64-bit value on the stack (<c>Cpu.SignExtend</c>).</summary>
    static void SignExtend(ILGenerator il, int bits)
    {
        if (bits < 64)
        {
            il.Emit(bits switch { 8 => OpCodes.Conv_I1, 16 => OpCodes.Conv_I2, _ => OpCodes.Conv_I4 });
            il.Emit(OpCodes.Conv_I8);
        }
    }

    /// <summary>Truncates the 64-bit value on the stack to the width and zero-extends it back.</summary>
    static void ZeroExtend(ILGenerator il, int bits)
    {
        if (bits < 64)
        {
            il.Emit(bits switch { 8 => OpCodes.Conv_U1, 16 => OpCodes.Conv_U2, _ => OpCodes.Conv_U4 });
            il.Emit(OpCodes.Conv_U8);
        }
    }

    /// <summary>
    /// Stores the 64-bit value on the stack into the register whose address is below it
    /// (<see cref="EmitRegAddress"/>) at the width: a 32-bit write zeroes bits 63:32, 8- and 16-bit
    /// writes leave the rest of the register as it was (SDM Vol. 1 3.4.1.1) — the register file is
    /// little-endian host memory, so storing only the low bytes is that merge.
    /// </summary>
    static void EndStore(ILGenerator il, int bits)
    {
        if (bits == 32)
        {
            il.Emit(OpCodes.Conv_U4);
            il.Emit(OpCodes.Conv_U8);
        }
        il.Emit(bits switch { 8 => OpCodes.Stind_I1, 16 => OpCodes.Stind_I2, _ => OpCodes.Stind_I8 });
    }

    /// <summary>The address of general register <paramref name="slot"/>'s bytes at the width: at 8
    /// bits a slot from <see cref="RegisterFile.HighByteBase"/> is bits 15:8 of a legacy register.</summary>
    static void EmitRegAddress(ILGenerator il, Locals l, int slot, int bits)
    {
        if (bits == 8 && slot >= RegisterFile.HighByteBase)
        {
            EmitSlotAddress(il, l, slot - RegisterFile.HighByteBase);
            il.Emit(OpCodes.Ldc_I4_1);
            il.Emit(OpCodes.Add);
            return;
        }
        EmitSlotAddress(il, l, slot);
    }

    /// <summary>The address of <c>Gpr[slot]</c>: the fixed buffer is the register file's first field.</summary>
    static void EmitSlotAddress(ILGenerator il, Locals l, int slot)
    {
        if (slot is < 0 or > RegisterFile.NextRip)
        {
            throw new InvalidOperationException($"register slot {slot} is not a general register");
        }
        il.Emit(OpCodes.Ldloc, l.Regs);
        if (slot > 0)
        {
            il.Emit(OpCodes.Ldc_I4, slot * sizeof(ulong));
            il.Emit(OpCodes.Add);
        }
    }
}
