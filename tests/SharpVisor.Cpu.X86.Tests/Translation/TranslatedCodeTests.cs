using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Tests.Harness;
using SharpVisor.Cpu.X86.Translation;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Translation;

/// <summary>
/// The cases issue 10 names where a translation can go stale or lose precision: code written by the
/// vCPU itself (in an earlier block, and later in the same block), code written by DMA, and a page
/// fault in the middle of a translated block. Each runs on a <see cref="TierPair"/>, which fails on any
/// difference from the interpreter, and also checks the result the architecture gives.
/// </summary>
public sealed unsafe class TranslatedCodeTests
{
    const ulong Code = InterpreterMachine.CodeAddress;
    const ulong Unmapped = 0x22000;
    const uint OldValue = 0x1111_1111, NewValue = 0x2222_2222;

    /// <summary><c>mov eax, imm32</c> spelled out so the immediate has a label: the bytes a store overwrites.</summary>
    static void MovEaxWithLabelledImmediate(Assembler a, ref Label immediate, uint value)
    {
        a.db(0xB8); // MOV EAX, imm32 (B8+rd id)
        a.Label(ref immediate);
        a.dd(value);
    }

    static TierPair Load(byte[] code)
    {
        var pair = new TierPair();
        pair.Write(Code, code);
        pair.Write(Code + (ulong)code.Length, [0x0F, 0x0B]); // UD2: nothing runs past the code
        pair.Both(m => m.Cpu.Rip = Code);
        pair.Compare(Code, code.Length + 2); // the code itself is data these tests write
        return pair;
    }

    [Fact]
    public void A_store_in_an_earlier_block_replaces_a_translated_block()
    {
        // T runs translated with the old immediate, the next block stores the new one into T, T runs again.
        var immediate = default(Label);
        var done = default(Label);
        byte[] code = TierPair.Assemble(Code, a =>
        {
            var top = a.CreateLabel();
            immediate = a.CreateLabel();
            done = a.CreateLabel();
            a.Label(ref top);
            MovEaxWithLabelledImmediate(a, ref immediate, OldValue);
            a.add(ebx, eax);
            a.dec(ecx);
            a.jz(done);                                 // T ends here
            a.mov(__dword_ptr[immediate], NewValue);    // the next block rewrites T's immediate
            a.jmp(top);
            a.Label(ref done);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m => { m.Cpu.Rbx = 0; m.Cpu.Rcx = 2; });

        Assert.Equal<int?>(Vector.UD, pair.Run(end: ulong.MaxValue));

        Assert.Equal(NewValue, pair.Translated.Cpu.Rax);
        Assert.Equal((ulong)(OldValue + NewValue), pair.Translated.Cpu.Rbx);
        Assert.Equal(5, pair.Blocks); // T, the store (the block ends after a write into code), JMP, T again, UD2
    }

    [Fact]
    public void A_store_into_a_later_instruction_of_the_same_block_runs_the_new_instruction()
    {
        // One block: the store, then the instruction it rewrites. The translation was made from the
        // old bytes; the instruction that runs must be the new one (SDM Vol. 3A 11.6: a write to an
        // instruction already fetched is detected and the instruction refetched).
        var immediate = default(Label);
        byte[] code = TierPair.Assemble(Code, a =>
        {
            immediate = a.CreateLabel();
            a.mov(__dword_ptr[immediate], NewValue);
            a.add(ebx, 1);
            MovEaxWithLabelledImmediate(a, ref immediate, OldValue);
            a.add(ebx, eax);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m => m.Cpu.Rbx = 0);

        Assert.Equal<int?>(Vector.UD, pair.Run(end: ulong.MaxValue));

        Assert.Equal(NewValue, pair.Translated.Cpu.Rax);
        Assert.Equal((ulong)NewValue + 1, pair.Translated.Cpu.Rbx);
    }

    [Fact]
    public void Code_written_by_DMA_replaces_a_translated_block()
    {
        var immediate = default(Label);
        byte[] code = TierPair.Assemble(Code, a =>
        {
            immediate = a.CreateLabel();
            MovEaxWithLabelledImmediate(a, ref immediate, OldValue);
            a.add(ebx, eax);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m => m.Cpu.Rbx = 0);

        Assert.Equal<int?>(Vector.UD, pair.RunBlock()); // translated now, and run once
        Assert.Equal(OldValue, pair.Translated.Cpu.Rax);

        // A device writes the new immediate into the block's page, as a disk read into memory would.
        pair.Both(m =>
        {
            var dma = new IdentityDmaSpace(m.Ram);
            Assert.Equal(DmaStatus.Ok, dma.Write(Code + 1, BitConverter.GetBytes(NewValue)));
            m.Cpu.Rip = Code;
        });
        Assert.Equal<int?>(Vector.UD, pair.RunBlock());

        Assert.Equal(NewValue, pair.Translated.Cpu.Rax);
        Assert.Equal((ulong)(OldValue + NewValue), pair.Translated.Cpu.Rbx);
    }

    public enum Access { Load, Store, ReadModifyWrite, StraddlingStore }

    [Theory]
    [InlineData(Access.Load)]
    [InlineData(Access.Store)]
    [InlineData(Access.ReadModifyWrite)]
    [InlineData(Access.StraddlingStore)]
    public void A_page_fault_in_the_middle_of_a_translated_block_is_precise_and_the_block_resumes(Access access)
    {
        const ulong Sentinel = 0x5E17_0000_0000_0000;
        ulong faultAddress = access == Access.StraddlingStore ? Unmapped : Unmapped + 0x100;
        static void BeforeTheFault(Assembler a)
        {
            a.mov(eax, 1); // register-only instructions: translated code does not keep RIP
            a.mov(ebx, 2); // for them, so the fault must commit it
            a.add(rcx, rax);
        }
        ulong faultingInstruction = Code + (ulong)TierPair.Assemble(Code, BeforeTheFault).Length;
        byte[] code = TierPair.Assemble(Code, a =>
        {
            BeforeTheFault(a);
            switch (access)
            {
                case Access.Load: a.mov(rdx, __qword_ptr[r15 + 0x100]); break;
                case Access.Store: a.mov(__qword_ptr[r15 + 0x100], rax); break;
                case Access.ReadModifyWrite: a.add(__qword_ptr[r15 + 0x100], rax); break;
                case Access.StraddlingStore: a.mov(__qword_ptr[r15 - 4], rcx); break; // half in the page before
            }
            a.mov(esi, 5);
            a.mov(edi, 6);
            a.add(rdx, rsi);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m =>
        {
            m.Unmap(Unmapped);
            for (int r = 0; r < 15; r++)
            {
                m.Cpu.Regs.Gpr[r] = Sentinel + (ulong)r;
            }
            m.Cpu.Rsp = 0x80000;
            m.Cpu.Regs.Gpr[15] = Unmapped;
        });
        pair.Compare(Unmapped - 0x1000, 0x2000);

        Assert.Equal<int?>(Vector.PF, pair.RunBlock());

        var c = pair.Translated.Cpu;
        Assert.Equal(faultingInstruction, c.Rip);
        Assert.Equal(faultAddress, c.Cr2);
        Assert.Equal((1UL, 2UL, Sentinel + 1 + 1), (c.Rax, c.Rbx, c.Rcx)); // written before the fault
        Assert.Equal((Sentinel + 2, Sentinel + 6, Sentinel + 7), (c.Rdx, c.Rsi, c.Rdi)); // not yet
        // As the interpreter counts them (TierPair compared every field; this one is the issue's).
        Assert.Equal(pair.Interpreted.Cpu.InstructionsRetired, c.InstructionsRetired);
        Assert.Equal(0UL, pair.Translated.Ram.ReadU64(Unmapped - 8)); // the straddling store wrote neither half

        // The OS maps the page and returns to the faulting instruction.
        pair.Both(m =>
        {
            m.Ram.WriteU64(Unmapped + 0x100, 0x1234);
            m.Remap(Unmapped, Unmapped);
        });
        Assert.Equal<int?>(Vector.UD, pair.Run(end: ulong.MaxValue));

        ulong expectedRdx = access == Access.Load ? 0x1234 + 5 : Sentinel + 2 + 5;
        Assert.Equal((expectedRdx, 5UL, 6UL), (c.Rdx, c.Rsi, c.Rdi));
        ulong expectedMemory = access switch
        {
            Access.Load => 0x1234,
            Access.Store => 1,
            Access.ReadModifyWrite => 0x1235,
            _ => 0x1234,
        };
        Assert.Equal(expectedMemory, pair.Translated.Ram.ReadU64(Unmapped + 0x100));
        if (access == Access.StraddlingStore)
        {
            Assert.Equal(Sentinel + 2, pair.Translated.Ram.ReadU64(Unmapped - 4));
        }
    }

    [Fact]
    public void A_page_fault_in_a_later_block_of_a_translated_loop_counts_the_blocks_that_completed()
    {
        // Two blocks on one page loop over an array until the load reaches the unmapped page: a region
        // (one translation running both blocks) takes the #PF in its second block many iterations in.
        byte[] code = TierPair.Assemble(Code, a =>
        {
            var top = a.CreateLabel();
            var load = a.CreateLabel();
            a.Label(ref top);
            a.add(rsi, 8);
            a.jmp(load);
            a.Label(ref load);
            a.mov(rax, __qword_ptr[rsi]);
            a.add(rbx, rax);
            a.dec(rcx);
            a.jnz(top);
            a.ud2();
        });
        using var translator = new Translator(new Log(), threshold: 2, background: false);
        var pair = new TierPair(translator);
        using var _ = pair;
        pair.Write(Code, code);
        pair.Both(m =>
        {
            m.Unmap(Unmapped);
            m.Cpu.Rip = Code;
            m.Cpu.Rsi = Unmapped - 0x1000;
            m.Cpu.Rcx = 10_000;
        });

        // No IDT: the #PF ends in a shutdown; TierPair compares RIP, registers, CR2 and the count.
        Assert.Equal(CpuExit.Shutdown, pair.RunSlice(1_000_000));

        Assert.True(translator.Counters.ChainedRegions.Value >= 1, "the loop did not run as a region");
        Assert.Equal(Unmapped, pair.Translated.Cpu.Cr2);
        // 511 iterations of 6 instructions loaded the page before the unmapped one; the 512th faulted
        // on its load after its ADD and JMP, and the run loop counts the faulting instruction too.
        Assert.Equal(511 * 6 + 2 + 1, pair.Translated.Cpu.InstructionsRetired);
    }

    /// <summary>
    /// Translated code stores an addition's CF, AF and OF only where something can observe them
    /// (InlineForms.PendingAux): a #PF in a later instruction of the block is such a place, and its
    /// frame holds the flags of the addition — carry, overflow and adjust all set here.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_fault_after_an_addition_sees_its_carry_overflow_and_adjust_flags(bool store)
    {
        byte[] code = TierPair.Assemble(Code, a =>
        {
            a.add(rax, rbx); // 0x8000000000000008 + 0x8000000000000008: CF, OF and AF
            a.mov(rcx, rax);
            if (store)
            {
                a.mov(__qword_ptr[rdx], rcx);
            }
            else
            {
                a.mov(rcx, __qword_ptr[rdx]);
            }
            a.cmp(rcx, rsi); // would overwrite them
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m =>
        {
            m.Unmap(Unmapped);
            m.Cpu.Rax = 0x8000_0000_0000_0008;
            m.Cpu.Rbx = 0x8000_0000_0000_0008;
            m.Cpu.Rdx = Unmapped;
        });

        Assert.Equal<int?>(Vector.PF, pair.Run(end: ulong.MaxValue)); // and the tiers agree on all state

        ulong flags = pair.Translated.Cpu.GetFlags();
        Assert.Equal(RFlags.CF | RFlags.OF | RFlags.AF, flags & (RFlags.CF | RFlags.OF | RFlags.AF));
        Assert.Equal(Code + 3 + 3, pair.Translated.Cpu.Rip); // at the faulting MOV
    }

    /// <summary>
    /// CALL r64, CALL m64 and JMP m64 (the translator has IL of its own for them), each taken in
    /// turn, then faulting: a CALL whose target is unreadable and one whose push is leave RSP and
    /// the stack as they were, and the #PF is at the CALL.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Indirect_calls_and_jumps_run_translated_as_interpreted(int fault)
    {
        const ulong Table = 0x30000, Stack = 0x80000;
        byte[] code = TierPair.Assemble(Code, a =>
        {
            var first = a.CreateLabel();
            var second = a.CreateLabel();
            var third = a.CreateLabel();
            var done = a.CreateLabel();
            a.lea(rax, __[first]);
            a.mov(__qword_ptr[rbx], rax);
            a.lea(rax, __[second]);
            a.mov(__qword_ptr[rbx + 8], rax);
            a.lea(rax, __[first]);
            a.call(rax); // to first, which returns
            a.call(__qword_ptr[rbx + 8]); // to second, which jumps on to third through the table
            a.jmp(done);
            a.Label(ref first);
            a.add(rcx, 1);
            a.ret();
            a.Label(ref second);
            a.add(rcx, 0x10);
            a.lea(rdx, __[third]);
            a.mov(__qword_ptr[rbx + 16], rdx);
            a.jmp(__qword_ptr[rbx + 16]);
            a.Label(ref third);
            a.add(rcx, 0x100);
            a.ret();
            a.Label(ref done);
            a.mov(rsp, rsi); // fault 1: the stack is unmapped; fault 2: the table is
            a.mov(rbx, rdi);
            a.call(__qword_ptr[rbx]);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m =>
        {
            m.Unmap(Unmapped);
            m.Cpu.Rsp = Stack;
            m.Cpu.Rbx = Table;
            m.Cpu.Rsi = fault == 1 ? Unmapped + 0x100 : Stack;
            m.Cpu.Rdi = fault == 2 ? Unmapped : Table;
        });
        pair.Compare(Table, 0x20);
        pair.Compare(Stack - 0x100, 0x200);

        int? vector = pair.Run(end: ulong.MaxValue);

        if (fault == 0)
        {
            Assert.Equal<int?>(Vector.UD, vector); // the last CALL went to first, whose RET came back
            Assert.Equal(0x112UL, pair.Translated.Cpu.Rcx);
        }
        else
        {
            Assert.Equal<int?>(Vector.PF, vector);
            Assert.Equal(0x111UL, pair.Translated.Cpu.Rcx);
            Assert.Equal(fault == 1 ? Unmapped + 0x100 : Stack, pair.Translated.Cpu.Rsp);
        }
    }

    [Fact]
    public void NOPs_take_no_code_and_RIP_still_moves_past_them()
    {
        // Multi-byte NOPs (a memory operand that is never accessed, here an unmapped one) between
        // instructions that commit RIP: a handler that does nothing is left out of translated code.
        byte[] code = TierPair.Assemble(Code, a =>
        {
            a.nop(__dword_ptr[rax + (long)Unmapped]);
            a.mov(ebx, 7);
            a.nop();
            a.nop(__word_ptr[rax + rax]);
            a.mov(__dword_ptr[rsp - 8], ebx);
            a.nop(__qword_ptr[rbx + rcx * 8 + 0x100]);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m => m.Cpu.Rsp = 0x80000);
        pair.Compare(0x80000 - 0x100, 0x200);

        Assert.Equal<int?>(Vector.UD, pair.Run(end: ulong.MaxValue));
        Assert.Equal(7UL, pair.Translated.Cpu.Rbx);

        pair.Translated.Cpu.Rip = Code;
        var block = pair.Translated.Cpu.BlocksForTest().Single(b => b.Count > 1);
        Assert.Equal(1, BlockCompiler.Compile(block).CalledThroughPointer); // the UD2 alone, none of the four NOPs
    }

    [Fact]
    public void PUSH_RSP_and_POP_RSP_use_the_stack_pointer_as_the_architecture_says()
    {
        // PUSH RSP stores RSP as it was before the push; POP RSP loads the popped value after the
        // increment (SDM Vol. 2B PUSH, POP). The translator has its own IL for both.
        byte[] code = TierPair.Assemble(Code, a =>
        {
            a.push(rsp);
            a.pop(rax);
            a.push(rbx);
            a.pop(rsp);
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m =>
        {
            m.Cpu.Rsp = 0x80000;
            m.Cpu.Rbp = 0x1111;
            m.Cpu.Rbx = 0x7_0000;
        });
        pair.Compare(0x80000 - 0x100, 0x200);

        Assert.Equal<int?>(Vector.UD, pair.Run(end: ulong.MaxValue));

        Assert.Equal(0x80000UL, pair.Translated.Cpu.Rax);
        Assert.Equal(0x7_0000UL, pair.Translated.Cpu.Rsp);
    }

    [Theory]
    [InlineData(32)]
    [InlineData(8)]
    public void A_read_modify_write_whose_store_faults_leaves_the_flags_as_they_were(int bits)
    {
        // ADD [m], r on a read-only page (CR0.WP): the load succeeds, the store raises #PF. The
        // instruction has no effect (SDM Vol. 3A 6.5: a fault leaves the state as before it), so the
        // flags are still CMP's — ZF set, OF clear — not the ADD's 0x7FFFFFFF + 1 (OF set, ZF clear);
        // TierPair compares the rest of the state between the tiers.
        const ulong ReadOnly = 0x23000;
        byte[] code = TierPair.Assemble(Code, a =>
        {
            a.cmp(eax, eax);
            if (bits == 32)
            {
                a.add(__dword_ptr[rbx], ecx);
            }
            else
            {
                a.add(__byte_ptr[rbx + 3], cl);
            }
            a.ud2();
        });
        using var pair = Load(code);
        pair.Both(m =>
        {
            m.Ram.WriteU32(ReadOnly, 0x7FFF_FFFF);
            m.MakeReadOnly(ReadOnly);
            m.Cpu.Rbx = ReadOnly;
            m.Cpu.Rcx = 1;
        });
        pair.Compare(ReadOnly, 8);

        Assert.Equal<int?>(Vector.PF, pair.RunBlock());

        Assert.Equal(Code + 2, pair.Translated.Cpu.Rip);
        Assert.Equal(0x7FFF_FFFFu, pair.Translated.Ram.ReadU32(ReadOnly));
        foreach (var tier in new[] { pair.Interpreted.Cpu, pair.Translated.Cpu })
        {
            Assert.True(tier.ZF(), "ZF of the CMP before the faulting ADD");
            Assert.False(tier.OF(), "OF of the CMP before the faulting ADD");
        }
    }
}
