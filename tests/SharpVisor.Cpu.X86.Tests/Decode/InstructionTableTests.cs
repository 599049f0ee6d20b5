using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Decode;

/// <summary>
/// The instruction table (Decode/InstructionTable.cs) against Iced, the SDM's VM-exit lists and the
/// binders: every implemented form binds to a handler, the derived data agrees with what Iced says
/// about real decoded instructions, branches end blocks, and forms outside the table stay #UD.
/// </summary>
public unsafe class InstructionTableTests
{
    /// <summary>
    /// One decoded instance of every Code reachable through the legacy opcode maps: each opcode byte
    /// of the one-byte, 0F, 0F 38 and 0F 3A maps with every ModRM byte, under the prefixes that select
    /// other forms there, in 16-, 32- and 64-bit code. The bytes after the ModRM are 02 (a SIB of
    /// [rdx + rax], displacements and immediates of 2: a shift by 2 is the general case for flags).
    /// </summary>
    static readonly Lazy<Dictionary<Code, (Instruction Ins, int Bitness)>> s_samples = new(() => CollectSamples(registerFormsOnly: false));

    /// <summary>The same, keeping for each Code an instance with no memory operand, when it has one.</summary>
    static readonly Lazy<Dictionary<Code, (Instruction Ins, int Bitness)>> s_registerSamples = new(() => CollectSamples(registerFormsOnly: true));

    static Dictionary<Code, (Instruction, int)> CollectSamples(bool registerFormsOnly)
    {
        var samples = new Dictionary<Code, (Instruction, int)>();
        byte[][] maps = [[], [0x0F], [0x0F, 0x38], [0x0F, 0x3A]];
        foreach (int bitness in new[] { 16, 32, 64 })
        {
            List<byte[]> prefixes = [[], [0x66], [0xF2], [0xF3], [0x67], [0x9B], [0x66, 0x67]];
            if (bitness == 64)
            {
                prefixes.AddRange([[0x48], [0x66, 0x48], [0xF2, 0x48], [0xF3, 0x48]]);
            }
            var buffer = new byte[24];
            var reader = new ByteArrayCodeReader(buffer);
            var decoder = Decoder.Create(bitness, reader);
            foreach (var prefix in prefixes)
            {
                foreach (var map in maps)
                {
                    int at = prefix.Length + map.Length;
                    prefix.CopyTo(buffer, 0);
                    map.CopyTo(buffer, prefix.Length);
                    for (int opcode = 0; opcode < 256; opcode++)
                    {
                        for (int modrm = 0; modrm < 256; modrm++)
                        {
                            buffer[at] = (byte)opcode;
                            buffer[at + 1] = (byte)modrm;
                            buffer.AsSpan(at + 2).Fill(0x02);
                            reader.Position = 0;
                            decoder.IP = 0x1000;
                            decoder.Decode(out var ins);
                            if (ins.Code != Code.INVALID && !samples.ContainsKey(ins.Code) && !(registerFormsOnly && HasMemoryOperand(ins)))
                            {
                                samples[ins.Code] = (ins, bitness);
                            }
                        }
                    }
                }
            }
        }
        return samples;
    }

    static List<Code> ImplementedCodes()
    {
        var codes = new List<Code>();
        var forms = InstructionTable.Forms;
        for (int i = 0; i < forms.Length; i++)
        {
            if (forms[i].Implemented)
            {
                codes.Add((Code)i);
            }
        }
        return codes;
    }

    static Op Bind(in Instruction ins)
    {
        var op = new Op();
        Binder.Bind(ins, ref op);
        return op;
    }

    [Fact]
    public void EveryImplementedFormBindsToAHandler()
    {
        var samples = s_samples.Value;
        var failures = new List<string>();
        var unsampled = new List<Code>();
        foreach (var code in ImplementedCodes())
        {
            if (!samples.TryGetValue(code, out var s))
            {
                unsampled.Add(code);
                continue;
            }
            var op = Bind(s.Ins);
            if (Binder.IsUnimplemented(op) || Binder.IsInvalidOpcode(op))
            {
                failures.Add($"{code} ({s.Ins}, {s.Bitness}-bit)");
            }
        }
        Assert.True(failures.Count == 0, "rows whose binder refuses the form: " + string.Join(", ", failures));
        // Not sampled: VEX forms (BMI1/BMI2, bound as #UD: not advertised), and forms Iced's decoder
        // never produces with the options the CPU uses: FWAIT-combined x87 forms (FSTSW = 9B DD /7 is
        // decoded as WAIT, then FNSTSW), AMD-only encodings, the 486's CMPXCHG opcodes.
        Assert.All(unsampled, code =>
        {
            var opCode = code.ToOpCode();
            Assert.True(code.Encoding() != EncodingKind.Legacy || opCode.Fwait || opCode.DecoderOption != DecoderOptions.None
                || !(opCode.IntelDecoder16 || opCode.IntelDecoder32 || opCode.IntelDecoder64), $"{code} has no sample");
        });
        Assert.True(ImplementedCodes().Count > 1000, "the table covers the general-purpose, x87, SSE and system forms");
    }

    [Fact]
    public void FlagsAgreeWithIcedForEveryDecodedForm()
    {
        var failures = new List<string>();
        foreach (var (code, (ins, _)) in s_samples.Value)
        {
            ref readonly var form = ref InstructionTable.Form(code);
            if (!form.Implemented)
            {
                continue;
            }
            // XOR/SUB r, r with the same register is the zeroing idiom, for which Iced reports the
            // flags as cleared/set instead of written; the row describes the general form.
            if (ins.OpCount >= 2 && ins.Op0Kind == OpKind.Register && ins.Op1Kind == OpKind.Register && ins.Op0Register == ins.Op1Register)
            {
                continue;
            }
            uint read = Rflags(ins.RflagsRead);
            uint written = Rflags(ins.RflagsWritten | ins.RflagsCleared | ins.RflagsSet);
            uint undefined = Rflags(ins.RflagsUndefined);
            if (form.FlagsRead != read || form.FlagsWritten != written || form.FlagsUndefined != undefined)
            {
                failures.Add($"{code}: table r={form.FlagsRead:x} w={form.FlagsWritten:x} u={form.FlagsUndefined:x}, Iced r={read:x} w={written:x} u={undefined:x}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>The row's memory access is what the segment checks used to ask Iced per instruction;
    /// outside 64-bit mode (where the checks apply) it must agree for every decoded memory form.</summary>
    [Fact]
    public void MemoryAccessAgreesWithIcedOutside64BitMode()
    {
        var factory = new InstructionInfoFactory();
        var failures = new List<string>();
        int checkedForms = 0;
        foreach (var (code, (ins, bitness)) in s_samples.Value)
        {
            ref readonly var form = ref InstructionTable.Form(code);
            if (!form.Implemented || bitness == 64)
            {
                continue;
            }
            for (int i = 0; i < ins.OpCount; i++)
            {
                if (ins.GetOpKind(i) != OpKind.Memory)
                {
                    continue;
                }
                var expected = factory.GetInfo(ins).GetOpAccess(i) switch
                {
                    OpAccess.Read or OpAccess.CondRead => SegmentAccess.Read,
                    OpAccess.Write or OpAccess.CondWrite => SegmentAccess.Write,
                    OpAccess.ReadWrite or OpAccess.ReadCondWrite => SegmentAccess.ReadWrite,
                    _ => SegmentAccess.None,
                };
                checkedForms++;
                if (form.MemoryOperand != expected)
                {
                    failures.Add($"{code}: table {form.MemoryOperand}, Iced {expected}");
                }
                var bound = Bind(ins);
                if (bound.MemAccess != expected && !Binder.IsInvalidOpcode(bound))
                {
                    failures.Add($"{code}: op {bound.MemAccess}, Iced {expected}");
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.True(checkedForms > 500);
    }

    [Fact]
    public void EveryBranchEndsItsBlock()
    {
        foreach (var code in ImplementedCodes())
        {
            if (code.FlowControl() != FlowControl.Next)
            {
                Assert.NotEqual(BlockEnd.None, InstructionTable.Form(code).EndsBlock);
                Assert.Equal(FaultKind.May, InstructionTable.Form(code).Faults);
            }
        }
        foreach (var (code, (ins, _)) in s_samples.Value)
        {
            if (InstructionTable.Form(code).EndsBlock != BlockEnd.None)
            {
                Assert.True((Bind(ins).Flags & OpFlags.EndsBlock) != 0, $"{code} ends its block");
            }
        }
    }

    /// <summary>Instructions that cause VM exits, unconditionally or under a VM-execution control, by
    /// basic exit reason (SDM Vol. 3C 26.1.2, 26.1.3 and Appendix C).</summary>
    static readonly Dictionary<int, Mnemonic[]> s_sdmExits = new()
    {
        [10] = [Mnemonic.Cpuid],
        [12] = [Mnemonic.Hlt],
        [13] = [Mnemonic.Invd],
        [14] = [Mnemonic.Invlpg],
        [15] = [Mnemonic.Rdpmc],
        [16] = [Mnemonic.Rdtsc],
        [28] = [Mnemonic.Mov, Mnemonic.Clts, Mnemonic.Lmsw],
        [29] = [Mnemonic.Mov],
        [30] = [Mnemonic.In, Mnemonic.Out, Mnemonic.Insb, Mnemonic.Insw, Mnemonic.Insd, Mnemonic.Outsb, Mnemonic.Outsw, Mnemonic.Outsd],
        [31] = [Mnemonic.Rdmsr],
        [32] = [Mnemonic.Wrmsr],
        [36] = [Mnemonic.Mwait],
        [39] = [Mnemonic.Monitor],
        [40] = [Mnemonic.Pause],
        [46] = [Mnemonic.Lgdt, Mnemonic.Lidt, Mnemonic.Sgdt, Mnemonic.Sidt],
        [47] = [Mnemonic.Lldt, Mnemonic.Ltr, Mnemonic.Sldt, Mnemonic.Str],
        [51] = [Mnemonic.Rdtscp],
        [54] = [Mnemonic.Wbinvd],
        [55] = [Mnemonic.Xsetbv],
        [57] = [Mnemonic.Rdrand],
        [58] = [Mnemonic.Invpcid],
        [61] = [Mnemonic.Rdseed],
    };

    [Fact]
    public void VmExitReasonsAreTheSdms()
    {
        foreach (var code in ImplementedCodes())
        {
            var exit = InstructionTable.Form(code).VmExit;
            if (exit == VmExit.None)
            {
                continue;
            }
            Assert.True(s_sdmExits.TryGetValue(exit.BasicExitReason(), out var mnemonics) && mnemonics.Contains(code.Mnemonic()),
                $"{code} exits with {exit} ({exit.BasicExitReason()}), which the SDM does not list for {code.Mnemonic()}");
        }
        // Every listed mnemonic has its exit on every form of it the table implements (MOV only for CR and DR).
        foreach (var (reason, mnemonics) in s_sdmExits)
        {
            foreach (var code in ImplementedCodes().Where(c => mnemonics.Contains(c.Mnemonic()) && c.Mnemonic() != Mnemonic.Mov))
            {
                Assert.Equal(reason, InstructionTable.Form(code).VmExit.BasicExitReason());
            }
        }
        Assert.Equal(10, InstructionTable.Form(Code.Cpuid).VmExit.BasicExitReason());
        Assert.Equal(VmExit.Rdmsr, InstructionTable.Form(Code.Rdmsr).VmExit);
        Assert.Equal(VmExit.Hlt, InstructionTable.Form(Code.Hlt).VmExit);
        Assert.Equal(VmExit.IoInstruction, InstructionTable.Form(Code.In_AL_DX).VmExit);
        Assert.Equal(VmExit.IoInstruction, InstructionTable.Form(Code.Out_imm8_AL).VmExit);
        Assert.Equal(VmExit.IoInstruction, InstructionTable.Form(Code.Outsb_DX_m8).VmExit);
        Assert.Equal(VmExit.ControlRegisterAccess, InstructionTable.Form(Code.Mov_cr_r64).VmExit);
        Assert.Equal(VmExit.MovDr, InstructionTable.Form(Code.Mov_r32_dr).VmExit);
        Assert.Equal(VmExit.None, InstructionTable.Form(Code.Mov_r64_rm64).VmExit);
        Assert.Equal(VmExit.None, InstructionTable.Form(Code.Add_rm32_r32).VmExit);
    }

    /// <summary>Iced decodes these; the table has no row for them (SSE3, VEX), so they raise #UD through
    /// the counted, logged "unimplemented" path and end the block, as before the table.</summary>
    [Theory]
    [InlineData(new byte[] { 0x66, 0x0F, 0xD0, 0xC1 }, Code.Addsubpd_xmm_xmmm128)]
    [InlineData(new byte[] { 0xC5, 0xF8, 0x58, 0xC1 }, Code.VEX_Vaddps_xmm_xmm_xmmm128)]
    [InlineData(new byte[] { 0x0F, 0x38, 0xF0, 0x03 }, Code.Movbe_r32_m32)]
    public void AFormOutsideTheTableIsUnimplemented(byte[] bytes, Code code)
    {
        var decoder = Decoder.Create(64, new ByteArrayCodeReader(bytes));
        decoder.Decode(out var ins);
        Assert.Equal(code, ins.Code);
        Assert.False(InstructionTable.Form(code).Implemented);
        var op = Bind(ins);
        Assert.True(Binder.IsUnimplemented(op));
        Assert.True((op.Flags & OpFlags.EndsBlock) != 0);
    }

    /// <summary>LOCK is legal only on the forms Iced and the SDM allow, with a memory destination;
    /// decoded without Iced's own check, any other LOCK binds to #UD (SDM Vol. 2A LOCK).</summary>
    [Theory]
    [InlineData(new byte[] { 0xF0, 0x01, 0x18 }, false)] // lock add [rax], ebx
    [InlineData(new byte[] { 0xF0, 0x0F, 0xC1, 0x18 }, false)] // lock xadd [rax], ebx
    [InlineData(new byte[] { 0xF0, 0x01, 0xD8 }, true)] // lock add eax, ebx: register destination
    [InlineData(new byte[] { 0xF0, 0x89, 0x18 }, true)] // lock mov [rax], ebx: MOV is not a locked form
    [InlineData(new byte[] { 0xF0, 0x39, 0x18 }, true)] // lock cmp [rax], ebx: no write
    [InlineData(new byte[] { 0xF0, 0x90 }, true)] // lock nop
    public void LockFollowsTheTable(byte[] bytes, bool ud)
    {
        var decoder = Decoder.Create(64, new ByteArrayCodeReader(bytes), DecoderOptions.NoInvalidCheck);
        decoder.Decode(out var ins);
        Assert.True(ins.HasLockPrefix);
        var op = Bind(ins);
        Assert.Equal(ud, Binder.IsInvalidOpcode(op));
        Assert.False(Binder.IsUnimplemented(op));
    }

    /// <summary>The LOCK rule comes from Iced; the forms it allows must be the SDM's list (Vol. 2A LOCK).</summary>
    [Fact]
    public void LockableFormsAreTheSdms()
    {
        Mnemonic[] sdm = [Mnemonic.Add, Mnemonic.Adc, Mnemonic.And, Mnemonic.Btc, Mnemonic.Btr, Mnemonic.Bts, Mnemonic.Cmpxchg,
            Mnemonic.Cmpxchg8b, Mnemonic.Cmpxchg16b, Mnemonic.Dec, Mnemonic.Inc, Mnemonic.Neg, Mnemonic.Not, Mnemonic.Or,
            Mnemonic.Sbb, Mnemonic.Sub, Mnemonic.Xor, Mnemonic.Xadd, Mnemonic.Xchg];
        var lockable = ImplementedCodes().Where(c => InstructionTable.Form(c).Lock == LockRule.MemoryDestination).ToList();
        Assert.All(lockable, code => Assert.Contains(code.Mnemonic(), sdm));
        Assert.All(sdm, m => Assert.Contains(lockable, c => c.Mnemonic() == m));
    }

    /// <summary>The string and SSE2 forms that share the MOVSD and CMPSD mnemonics have their own rows.</summary>
    [Fact]
    public void SharedMnemonicsHaveRowsPerCode()
    {
        Assert.Equal(Code.Movsd_m32_m32.Mnemonic(), Code.Movsd_xmm_xmmm64.Mnemonic());
        var stringForm = InstructionTable.Form(Code.Movsd_m32_m32);
        var sseForm = InstructionTable.Form(Code.Movsd_xmm_xmmm64);
        Assert.True(stringForm.Implemented && sseForm.Implemented);
        Assert.True(stringForm.ImplicitMemory);
        Assert.False(sseForm.ImplicitMemory);
        Assert.True(InstructionTable.Form(Code.Cmpsd_m32_m32).FlagsWritten != 0);
        Assert.Equal(0u, InstructionTable.Form(Code.Cmpsd_xmm_xmmm64_imm8).FlagsWritten);
    }

    [Fact]
    public void FaultKindsFollowTheForm()
    {
        Assert.Equal(FaultKind.Never, InstructionTable.Form(Code.Clc).Faults);
        Assert.Equal(FaultKind.Never, InstructionTable.Form(Code.Bswap_r32).Faults);
        Assert.Equal(FaultKind.ThroughMemoryOperand, InstructionTable.Form(Code.Add_rm32_r32).Faults);
        Assert.Equal(FaultKind.ThroughMemoryOperand, InstructionTable.Form(Code.Mov_r64_rm64).Faults);
        Assert.Equal(FaultKind.Never, InstructionTable.Form(Code.Lea_r64_m).Faults); // an address, never accessed
        Assert.Equal(FaultKind.May, InstructionTable.Form(Code.Div_rm32).Faults); // #DE
        Assert.Equal(FaultKind.May, InstructionTable.Form(Code.Push_r64).Faults); // the stack
        Assert.Equal(FaultKind.May, InstructionTable.Form(Code.Addps_xmm_xmmm128).Faults); // #NM, #UD
        Assert.Equal(FaultKind.May, InstructionTable.Form(Code.Wrmsr).Faults);
        Assert.Equal(BlockEnd.StateChange, InstructionTable.Form(Code.Mov_cr_r64).EndsBlock);
        Assert.Equal(BlockEnd.None, InstructionTable.Form(Code.Mov_r64_cr).EndsBlock);
        Assert.Equal(BlockEnd.InterruptShadow, InstructionTable.Form(Code.Popw_SS).EndsBlock);
        Assert.Equal(BlockEnd.Halt, InstructionTable.Form(Code.Hlt).EndsBlock);
        Assert.Equal(BlockEnd.None, InstructionTable.Form(Code.Add_rm32_r32).EndsBlock);
    }

    /// <summary>
    /// The table against the interpreter, on the register form of every implemented Code the table
    /// says cannot fault apart from its memory operand: run from random registers and flags, it
    /// must not fault, must leave every flag outside its written and undefined sets as it was, and,
    /// when it reads no flags, must compute the same registers and written flags whatever the
    /// flags were before.
    /// </summary>
    [Fact]
    public void RegisterFormsBehaveAsTheTableSays()
    {
        const ulong Observed = RFlags.Arith | RFlags.DF;
        var rng = new Random(0x7AB1E); // fixed: a failure reproduces
        using var machine64 = new InterpreterMachine(64);
        using var machine32 = new InterpreterMachine(32);
        var failures = new List<string>();
        int ran = 0;
        foreach (var (code, (sample, _)) in s_registerSamples.Value.OrderBy(kv => kv.Key))
        {
            ref readonly var form = ref InstructionTable.Form(code);
            if (!form.Implemented || form.Faults == FaultKind.May)
            {
                continue;
            }
            var machine = code.ToOpCode().Mode64 ? machine64 : machine32;
            var writer = new ByteWriter();
            if (!Encoder.Create(machine.Bits, writer).TryEncode(sample, InterpreterMachine.CodeAddress, out _, out _))
            {
                continue;
            }
            ran++;
            var gprs = new ulong[16];
            for (int i = 0; i < 16; i++)
            {
                gprs[i] = (ulong)rng.NextInt64();
            }
            gprs[1] = (gprs[1] & ~0xFFUL) | (uint)rng.Next(1, 32); // CL: a shift by 0 would leave the flags alone
            ulong flagsA = (ulong)rng.NextInt64() & Observed, flagsB = ~flagsA & Observed;
            var (vectorA, regsA, outA) = RunOnce(machine, writer.Bytes.ToArray(), gprs, flagsA);
            var (vectorB, regsB, outB) = RunOnce(machine, writer.Bytes.ToArray(), gprs, flagsB);
            ulong mayChange = form.FlagsWritten | form.FlagsUndefined;
            if (vectorA is not null || vectorB is not null)
            {
                failures.Add($"{code} ({sample}): #{vectorA ?? vectorB}, but the table says it cannot fault");
            }
            else if (((outA ^ flagsA) & Observed & ~mayChange) != 0 || ((outB ^ flagsB) & Observed & ~mayChange) != 0)
            {
                failures.Add($"{code} ({sample}): changed flags {((outA ^ flagsA) | (outB ^ flagsB)) & Observed & ~mayChange:x} outside written {form.FlagsWritten:x} / undefined {form.FlagsUndefined:x}");
            }
            else if ((form.FlagsRead & Observed) == 0 && (!regsA.SequenceEqual(regsB) || ((outA ^ outB) & form.FlagsWritten) != 0))
            {
                failures.Add($"{code} ({sample}): depends on the flags, but the table says it reads none");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.True(ran > 500, $"only {ran} register forms ran");
    }

    static bool HasMemoryOperand(in Instruction ins)
    {
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) is not (OpKind.Register or >= OpKind.Immediate8 and <= OpKind.Immediate32to64))
            {
                return true;
            }
        }
        return false;
    }

    static (int? Vector, ulong[] Gprs, ulong Flags) RunOnce(InterpreterMachine m, byte[] code, ulong[] gprs, ulong flags)
    {
        var c = m.Cpu;
        m.LoadBytes(code);
        c.FlushCodeCache();
        for (int i = 0; i < 16; i++)
        {
            c.Regs.Gpr[i] = m.Bits == 64 ? gprs[i] : (uint)gprs[i];
        }
        c.SetFlags((c.GetFlags() & ~(RFlags.Arith | RFlags.DF)) | flags);
        int? vector = m.Run(1);
        var after = new ulong[16];
        for (int i = 0; i < 16; i++)
        {
            after[i] = c.Regs.Gpr[i];
        }
        return (vector, after, c.GetFlags());
    }

    sealed class ByteWriter : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    /// <summary>Blocks hold their ops in arrays; the table lives outside the Op (found through Op.Code),
    /// so the Op keeps its size.</summary>
    [Fact]
    public void OpStaysCompact() => Assert.Equal(56, Unsafe.SizeOf<Op>());

    static uint Rflags(RflagsBits b)
    {
        uint f = 0;
        if ((b & RflagsBits.CF) != 0) f |= 1 << 0;
        if ((b & RflagsBits.PF) != 0) f |= 1 << 2;
        if ((b & RflagsBits.AF) != 0) f |= 1 << 4;
        if ((b & RflagsBits.ZF) != 0) f |= 1 << 6;
        if ((b & RflagsBits.SF) != 0) f |= 1 << 7;
        if ((b & RflagsBits.IF) != 0) f |= 1 << 9;
        if ((b & RflagsBits.DF) != 0) f |= 1 << 10;
        if ((b & RflagsBits.OF) != 0) f |= 1 << 11;
        if ((b & RflagsBits.AC) != 0) f |= 1 << 18;
        return f;
    }
}
