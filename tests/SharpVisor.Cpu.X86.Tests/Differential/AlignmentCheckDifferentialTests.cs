using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// Instructions run with EFLAGS.AC set (alignment checks on: CR0.AM, CPL 3) against the host,
/// in-process, so only cases that must not fault: aligned operands of every size and the accesses
/// alignment checking exempts at misaligned addresses (bytes, MOVUPS/MOVUPD/MOVDQU, REP MOVSB,
/// PUNPCKLBW mm, m32 at 4). While checks are on, every access goes through the slow path; it must
/// load and store exactly what the fast path does. (A host #AC here would kill the test process:
/// AlignmentCheckTests covers the faulting cases through a child process.)
/// </summary>
public unsafe class AlignmentCheckDifferentialTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public AlignmentCheckDifferentialTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 12;

    static readonly Dictionary<string, Action<Assembler>> s_cases = new()
    {
        ["loads and stores"] = a =>
        {
            a.mov(rax, __qword_ptr[rbx + 8]);
            a.mov(__dword_ptr[rbx + 0x14], ecx);
            a.movzx(edx, __word_ptr[rbx + 0x22]);
            a.mov(__byte_ptr[rbx + 0x33], cl);
            a.mov(r8b, __byte_ptr[rbx + 0x47]);
        },
        ["read-modify-write"] = a =>
        {
            a.add(__word_ptr[rbx + 0x18], dx);
            a.not(__qword_ptr[rbx + 0x40]);
            a.shld(__dword_ptr[rbx + 0x104], esi, 7);
            a.bts(__qword_ptr[rbx + 0x208], 45);
            a.cmp(__qword_ptr[rbx + 0x40], rax); // every flag defined again (SHLD by 7, BTS leave some undefined)
        },
        ["locked and exchange"] = a =>
        {
            a.@lock.xadd(__qword_ptr[rbx + 0x20], rsi);
            a.xchg(__dword_ptr[rbx + 0x2C], edi);
            a.@lock.cmpxchg8b(__qword_ptr[rbx + 0x30]);
            a.@lock.or(__word_ptr[rbx + 0x3E], cx);
        },
        ["stack"] = a =>
        {
            var next = a.CreateLabel();
            a.push(__qword_ptr[rbx + 0x48]);
            a.pop(__qword_ptr[rbx + 0x50]);
            a.pushfq();
            a.popfq();
            a.call(next);
            a.Label(ref next);
            a.pop(r9);
            a.enter(16, 0);
            a.mov(__qword_ptr[rbp - 8], rax);
            a.leave();
            a.db(0x66, 0x6A, 0x05); // push word 5
            a.db(0x66, 0x58);       // pop ax
        },
        ["string"] = a =>
        {
            a.lea(rsi, __[rbx + 0x100]);
            a.lea(rdi, __[rbx + 0x800]);
            a.mov(ecx, 16);
            a.rep.movsd();
            a.lodsq();
            a.cmpsw();
            a.lea(rdi, __[rbx + 0x900]);
            a.mov(ecx, 9);
            a.rep.stosq();
        },
        ["unaligned bytes and REP MOVSB"] = a =>
        {
            a.lea(rsi, __[rbx + 0x101]);
            a.lea(rdi, __[rbx + 0x803]);
            a.mov(ecx, 37);
            a.rep.movsb();
            a.add(__byte_ptr[rbx + 0x77], al);
            a.scasb();
        },
        ["MOVUPS, MOVUPD, MOVDQU misaligned"] = a =>
        {
            a.movups(xmm0, __xmmword_ptr[rbx + 3]);
            a.movupd(xmm1, __xmmword_ptr[rbx + 0x109]);
            a.movdqu(xmm2, __xmmword_ptr[rbx + 0x7F5]);
            a.movups(__xmmword_ptr[rbx + 0x20D], xmm3);
        },
        ["SSE and MMX scalars"] = a =>
        {
            a.movq(xmm3, __qword_ptr[rbx + 0x18]);
            a.movss(xmm4, __dword_ptr[rbx + 0x24]);
            a.movsd(__qword_ptr[rbx + 0x130], xmm5);
            a.pinsrw(xmm6, __word_ptr[rbx + 0x2A], 3);
            a.movhps(__qword_ptr[rbx + 0x140], xmm7);
            a.punpcklbw(mm0, __dword_ptr[rbx + 0x54]);
            a.paddw(mm1, __qword_ptr[rbx + 0x58]);
            a.movq(__qword_ptr[rbx + 0x160], mm1);
        },
    };

    public static TheoryData<string> Cases => [.. s_cases.Keys];

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheHostWithAlignmentChecksOn(string name)
    {
        var t = new DiffCase(_runner, name);
        var a = new Assembler(64);
        s_cases[name](a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), _runner.CodeAddress);
        byte[] code = ms.ToArray();
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            var ctx = t.RandomContext();
            ctx.Rflags |= RFlags.AC;
            ctx.Gpr[5] = _runner.StackTop - 256; // RBP for ENTER/LEAVE
            string diff = t.Check(code, ctx, t.RandomData(), DiffCase.ArithFlags | RFlags.AC, name);
            if (diff.Length > 0)
            {
                failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }
}
