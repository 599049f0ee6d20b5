using System.Diagnostics;
using System.Text;
using Iced.Intel;
using SharpVisor.Machine;
using Xunit.Abstractions;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Random ring-3 instruction sequences, run in a guest process under SharpVisor and natively on the
/// host (issue 16, "keeping them found"): for every case the signal it ends with, where, the flags,
/// the general registers and the memory it could write must be the same. This exercises what the
/// CPU unit tests cannot: the whole path through guest paging, the guest kernel's exception
/// handlers and its signal delivery (defect 2 was found this way).
/// </summary>
/// <remarks>
/// Cases are made of random opcodes with random prefixes and ModRM bytes, decoded by Iced to keep
/// only what both sides must agree on: instructions of the features SharpVisor's CPUID offers,
/// nothing that reads host-specific state (CPUID, time stamps, random numbers, descriptor tables,
/// FS/GS bases) or enters the kernel on purpose (SYSCALL, INT 80h), and no instruction that reads a
/// flag an earlier one left undefined. Undefined flags are masked before comparing.
/// </remarks>
[Collection(VmCollection.Name)]
public class Ring3InstructionTests(ITestOutputHelper output)
{
    const int Cases = 1500;
    const ulong Data = 0x1000_0000, Stack = 0x3000_0000, Code = 0x2000_0000;

    [Theory]
    [InlineData(1)]
    public void RandomUserInstructionsEndAsOnTheHost(int seed)
    {
        var cases = Generate(seed, Cases);
        string file = Path.Combine(Path.GetTempPath(), $"sv-ring3-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(file, Serialize(cases));
        byte[] program = GuestProgram.Build("ring3-cases");
        string hostProgram = Path.Combine(Path.GetTempPath(), $"sv-ring3-prog-{Guid.NewGuid():N}");
        File.WriteAllBytes(hostProgram, program);
        File.SetUnixFileMode(hostProgram, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        string initrd = GuestImage.Default.WithTestScript("""
            #!/bin/sh
            echo '==begin=='
            /test/ring3-cases /test/cases.bin 20
            echo '==end=='
            poweroff -f
            """, ("ring3-cases", program), ("cases.bin", File.ReadAllBytes(file)));
        try
        {
            var host = Parse(RunOnHost(hostProgram, file));
            var (exit, console) = BusyboxTests.Boot(GuestImage.Default.Kernel, initrd, "console=ttyS0 quiet", timeoutSeconds: 900);
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{TestHelpers.Tail(console)}");
            string text = console.Replace("\r\n", "\n");
            int begin = text.IndexOf("==begin==\n", StringComparison.Ordinal), end = text.IndexOf("==end==", StringComparison.Ordinal);
            Assert.True(begin >= 0 && end > begin, TestHelpers.Tail(console));
            var guest = Parse(text[(begin + 10)..end]);

            var mismatches = new List<string>();
            int compared = 0, timeouts = 0;
            var signals = new SortedDictionary<string, int>();
            for (int i = 0; i < cases.Count; i++)
            {
                Assert.True(host.TryGetValue(i, out var h), $"the host reported nothing for case {i}");
                Assert.True(guest.TryGetValue(i, out var g), $"the guest reported nothing for case {i}\n{TestHelpers.Tail(console)}");
                if (h.Timeout || g.Timeout)
                {
                    timeouts++;
                    continue;
                }
                compared++;
                signals[$"sig {h.Signal}"] = signals.GetValueOrDefault($"sig {h.Signal}") + 1;
                ulong mask = ~cases[i].UndefinedFlags;
                if (h.Signal != g.Signal || h.Rip != g.Rip || (h.Flags & mask) != (g.Flags & mask) || h.Regs != g.Regs || h.Memory != g.Memory)
                {
                    mismatches.Add($"case {i}: {cases[i]}\n  host:  {h}\n  guest: {g}");
                }
            }
            output.WriteLine($"seed {seed}: {compared} cases compared ({string.Join(", ", signals.Select(s => $"{s.Key}: {s.Value}"))}), {timeouts} timed out, {mismatches.Count} differ");
            Assert.True(compared > Cases * 9 / 10, $"only {compared} of {Cases} cases could be compared ({timeouts} timed out)");
            Assert.True(mismatches.Count == 0, $"seed {seed}: {mismatches.Count} of {compared} cases end differently in the guest:\n{string.Join("\n", mismatches.Take(40))}");
        }
        finally
        {
            File.Delete(initrd);
            File.Delete(file);
            File.Delete(hostProgram);
        }
    }

    /// <summary>One generated case: code, initial registers (RAX..R15, RFLAGS) and data page.</summary>
    sealed record Case(byte[] Code, ulong[] Registers, byte[] DataPage, ulong UndefinedFlags, string Text)
    {
        public override string ToString() => $"{Convert.ToHexString(Code)} ({Text}) flags-in {Registers[16]:x}";
    }

    readonly record struct Outcome(bool Timeout, int Signal, ulong Rip, ulong Flags, string Regs, string Memory)
    {
        public override string ToString() => Timeout ? "timeout" : $"sig {Signal} rip +{Rip:x} flags {Flags:x} regs {Regs} mem {Memory}";
    }

    static Dictionary<int, Outcome> Parse(string report)
    {
        var outcomes = new Dictionary<int, Outcome>();
        foreach (string line in report.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] f = line.Split(' ');
            if (f.Length < 3 || f[0] != "case" || !int.TryParse(f[1], out int n))
            {
                continue;
            }
            outcomes[n] = f[2] switch
            {
                "timeout" => new Outcome(true, 0, 0, 0, "", ""),
                "died" => new Outcome(false, -Convert.ToInt32(f[5], 16), 0, 0, "", ""), // killed by a signal the program does not catch
                _ => new Outcome(false, int.Parse(f[3]), Convert.ToUInt64(f[5], 16), Convert.ToUInt64(f[7], 16), f[9], f[11]),
            };
        }
        return outcomes;
    }

    static string RunOnHost(string program, string cases)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add(cases);
        psi.ArgumentList.Add("2");
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"ring3-cases failed on the host ({p.ExitCode})");
        return stdout;
    }

    static byte[] Serialize(List<Case> cases)
    {
        using var s = new MemoryStream();
        using var w = new BinaryWriter(s);
        w.Write((uint)cases.Count);
        foreach (var c in cases)
        {
            w.Write((byte)c.Code.Length);
            w.Write(c.Code);
            foreach (ulong r in c.Registers)
            {
                w.Write(r);
            }
            w.Write(c.DataPage);
        }
        w.Flush();
        return s.ToArray();
    }

    // ------------------------------------------------------------------ generation

    /// <summary>What SharpVisor's CPUID offers to user code (Model/CpuIdModel.cs), minus x87 and
    /// FXSAVE, whose saved images hold implementation-specific fields.</summary>
    static readonly HashSet<CpuidFeature> s_allowedFeatures =
    [
        CpuidFeature.INTEL8086, CpuidFeature.INTEL186, CpuidFeature.INTEL286, CpuidFeature.INTEL386, CpuidFeature.INTEL486,
        CpuidFeature.X64, CpuidFeature.CMOV, CpuidFeature.CMPXCHG16B, CpuidFeature.MMX, CpuidFeature.SSE, CpuidFeature.SSE2,
    ];

    /// <summary>Instructions whose outcome depends on the host, not on the architecture.</summary>
    static readonly HashSet<Mnemonic> s_hostDependent =
    [
        Mnemonic.Cpuid, Mnemonic.Rdtsc, Mnemonic.Rdtscp, Mnemonic.Rdpmc, Mnemonic.Rdrand, Mnemonic.Rdseed, Mnemonic.Rdpid,
        Mnemonic.Xgetbv, Mnemonic.Syscall, Mnemonic.Sysenter, Mnemonic.Sysexit, Mnemonic.Sysret,
        // Descriptor-table state: each kernel's GDT, and UMIP on the host.
        Mnemonic.Sgdt, Mnemonic.Sidt, Mnemonic.Sldt, Mnemonic.Str, Mnemonic.Smsw, Mnemonic.Lsl, Mnemonic.Lar, Mnemonic.Verr, Mnemonic.Verw,
        Mnemonic.Fxsave, Mnemonic.Fxsave64, Mnemonic.Fxrstor, Mnemonic.Fxrstor64,
    ];

    static readonly byte[] s_interestingOpcodes =
    [
        0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF, // string forms
        0xE0, 0xE1, 0xE2, 0xE3,                                     // LOOPcc, JrCXZ
        0xF6, 0xF7, 0xD0, 0xD1, 0xD2, 0xD3, 0xC0, 0xC1,             // MUL/DIV group, shifts
        0x98, 0x99, 0x9C, 0x9D, 0xC8, 0xC9, 0x8D, 0x63, 0xCD, 0xCC, // CBW/CQO, PUSHF/POPF, ENTER/LEAVE, LEA, MOVSXD, INT n, INT3
    ];

    static readonly byte[] s_interesting0F =
    [
        0xA3, 0xAB, 0xB3, 0xBB, 0xBA, 0xA4, 0xA5, 0xAC, 0xAD, 0xAF, 0xB0, 0xB1, 0xC0, 0xC1, 0xC7, 0xBC, 0xBD,
        0xC8, 0xC9, 0xB6, 0xB7, 0xBE, 0xBF, 0x40, 0x44, 0x4F, 0x90, 0x95, 0x9F, 0x18, 0x19, 0x1F, 0x0B, 0xFF,
    ];

    static List<Case> Generate(int seed, int count)
    {
        var random = new Random(seed);
        var cases = new List<Case>(count);
        while (cases.Count < count)
        {
            if (TryMakeCase(random) is { } c)
            {
                cases.Add(c);
            }
        }
        return cases;
    }

    static Case? TryMakeCase(Random random)
    {
        var code = new List<byte>();
        var text = new StringBuilder();
        ulong undefined = 0, stillUndefined = 0; // flags left undefined by any instruction; by the last to write them
        int instructions = 1 + random.Next(4);
        for (int n = 0; n < instructions; n++)
        {
            byte[] candidate = RandomInstructionBytes(random);
            var decoder = Iced.Intel.Decoder.Create(64, new ByteArrayCodeReader(candidate));
            decoder.IP = Code + (ulong)code.Count;
            decoder.Decode(out var ins);
            if (ins.IsInvalid || !Acceptable(ins) || (ToEflags(ins.RflagsRead) & stillUndefined) != 0)
            {
                return null;
            }
            stillUndefined = (stillUndefined & ~ToEflags(ins.RflagsModified)) | ToEflags(ins.RflagsUndefined);
            undefined |= ToEflags(ins.RflagsUndefined); // a later instruction may fault before it defines them
            code.AddRange(candidate.AsSpan(0, ins.Length).ToArray());
            text.Append(n == 0 ? "" : "; ").Append(ins.ToString());
        }
        var regs = new ulong[17];
        for (int r = 0; r < 16; r++)
        {
            regs[r] = random.Next(3) == 0 ? (ulong)random.Next(256) : (ulong)random.NextInt64() ^ ((ulong)random.Next(2) << 63);
        }
        regs[1] = random.Next(2) == 0 ? (ulong)random.Next(33) : regs[1];          // RCX: often a small count
        regs[3] = Data + (ulong)random.Next(2048);                                   // RBX, RSI, RDI: into the data page
        regs[6] = random.Next(4) == 0 ? regs[6] : Data + (ulong)random.Next(2048);
        regs[7] = random.Next(4) == 0 ? regs[7] : Data + (ulong)random.Next(2048);
        regs[4] = Stack + 0x1000;                                                    // RSP: the middle of the stack
        regs[5] = random.Next(2) == 0 ? Stack + 0x1800 : regs[5];
        ulong flags = 0x202 | ((ulong)random.Next(256) & 0xD5);                      // CF PF AF ZF SF: any
        flags |= random.Next(2) == 0 ? 0x800UL : 0;                                  // OF
        flags |= random.Next(10) == 0 ? 0x400UL : 0;                                 // DF
        flags |= random.Next(20) == 0 ? 0x4_0000UL : 0;                              // AC: alignment checks (CR0.AM is set)
        regs[16] = flags;
        var data = new byte[4096];
        random.NextBytes(data);
        return new Case([.. code], regs, data, undefined, text.ToString());
    }

    static byte[] RandomInstructionBytes(Random random)
    {
        var b = new List<byte>();
        if (random.Next(5) == 0)
        {
            b.Add(new byte[] { 0x66, 0x67, 0xF2, 0xF3, 0xF0 }[random.Next(5)]);
        }
        if (random.Next(3) == 0)
        {
            b.Add((byte)(0x40 + random.Next(16))); // REX
        }
        switch (random.Next(20))
        {
            case < 9: b.Add((byte)random.Next(256)); break;
            case < 14: b.Add(0x0F); b.Add((byte)random.Next(256)); break;
            case < 17: b.Add(s_interestingOpcodes[random.Next(s_interestingOpcodes.Length)]); break;
            default: b.Add(0x0F); b.Add(s_interesting0F[random.Next(s_interesting0F.Length)]); break;
        }
        // ModRM: mostly registers, else [RBX+disp8], [RSI], [RDI] or [RSP+disp8].
        switch (random.Next(10))
        {
            case < 6: b.Add((byte)(0xC0 | random.Next(64))); break;
            case < 8: b.Add((byte)(0x43 | (random.Next(8) << 3))); b.Add((byte)random.Next(128)); break;
            case 8: b.Add((byte)((random.Next(2) == 0 ? 0x06 : 0x07) | (random.Next(8) << 3))); break;
            default: b.Add((byte)(0x44 | (random.Next(8) << 3))); b.Add(0x24); b.Add((byte)random.Next(128)); break;
        }
        for (int i = 0; i < 10; i++)
        {
            b.Add(random.Next(3) == 0 ? (byte)random.Next(4) : (byte)random.Next(256)); // immediates and displacements
        }
        return [.. b];
    }

    static bool Acceptable(in Instruction ins)
    {
        if (s_hostDependent.Contains(ins.Mnemonic) || ins.Code.CpuidFeatures().Any(f => !s_allowedFeatures.Contains(f)))
        {
            return false;
        }
        if (ins.Mnemonic == Mnemonic.Int && ins.Immediate8 == 0x80)
        {
            return false; // the 32-bit system call
        }
        // FS and GS are each process's own (TLS): their bases differ between host and guest, and
        // loading them breaks the C library the runner's signal handler relies on.
        if (ins.Mnemonic is Mnemonic.Lfs or Mnemonic.Lgs
            || (ins.Mnemonic is Mnemonic.Mov or Mnemonic.Pop && ins.Op0Kind == OpKind.Register && ins.Op0Register is Register.FS or Register.GS))
        {
            return false;
        }
        for (int i = 0; i < ins.OpCount; i++)
        {
            if (ins.GetOpKind(i) is OpKind.Memory or OpKind.MemorySegSI or OpKind.MemorySegESI or OpKind.MemorySegRSI
                && ins.MemorySegment is Register.FS or Register.GS)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Iced's flag bits as RFLAGS bits.</summary>
    static ulong ToEflags(RflagsBits bits) =>
        ((bits & RflagsBits.CF) != 0 ? 0x1UL : 0) | ((bits & RflagsBits.PF) != 0 ? 0x4UL : 0) | ((bits & RflagsBits.AF) != 0 ? 0x10UL : 0)
        | ((bits & RflagsBits.ZF) != 0 ? 0x40UL : 0) | ((bits & RflagsBits.SF) != 0 ? 0x80UL : 0) | ((bits & RflagsBits.DF) != 0 ? 0x400UL : 0)
        | ((bits & RflagsBits.OF) != 0 ? 0x800UL : 0) | ((bits & RflagsBits.AC) != 0 ? 0x4_0000UL : 0);
}
