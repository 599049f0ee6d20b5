using SharpVisor.Cpu.X86.Tests.Differential;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>
/// The control instructions Linux's fpu__init_system and its FPU probing use (FNINIT, FNSTSW,
/// FNSTCW, FLDCW, FNCLEX, FWAIT, FNSTENV/FLDENV, FNSAVE/FRSTOR) and FFREE, FINCSTP, FDECSTP, FNOP,
/// against the host; every case compares the whole FNSAVE image.
/// </summary>
public sealed class X87ControlTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public X87ControlTests(RunnerFixture f) => _runner = f.Runner;

    void Run(int seed, int count, Func<X87Case, string> one)
    {
        var t = new X87Case(_runner, seed);
        var failures = new List<string>();
        for (int i = 0; i < X87Case.Iterations(count); i++)
        {
            string d = one(t);
            if (d.Length > 0) failures.Add(d);
        }
        Assert.True(failures.Count == 0, $"{failures.Count} failures:\n" + string.Join("\n", failures.Take(8)));
    }

    [Fact]
    public void FrstorThenFnsaveRoundTripsTheState() =>
        Run(1, 60, t => t.Check([], X87Mem.None, label: "frstor/fnsave"));

    [Fact]
    public void FninitAndTheStoresOfControlAndStatusWords()
    {
        byte[] body =
        [
            0xDF, 0xE0,                               // fnstsw ax
            0xDD, 0xBB, 0x80, 0x02, 0x00, 0x00,       // fnstsw [rbx+0x280]
            0xD9, 0xBB, 0x82, 0x02, 0x00, 0x00,       // fnstcw [rbx+0x282]
            0xDB, 0xE3,                               // fninit
            0xDD, 0xBB, 0x84, 0x02, 0x00, 0x00,       // fnstsw [rbx+0x284]
            0xD9, 0xBB, 0x86, 0x02, 0x00, 0x00,       // fnstcw [rbx+0x286]
        ];
        Run(2, 40, t => t.Check(body, X87Mem.None, label: "fninit"));
    }

    [Fact]
    public void FldcwLoadsTheControlWordAndFnclexClearsTheExceptions()
    {
        // FLDCW with a random word at [rbx+0x100] (random masks: an unmasked flag already set becomes
        // pending: ES and B set, which FNSTSW shows), then FNCLEX clears flags, SF, ES and B.
        byte[] body =
        [
            .. X87Case.Mem(0xD9, 5),                  // fldcw [rbx+0x100]
            0xDF, 0xE0,                               // fnstsw ax
            0xD9, 0xBB, 0x82, 0x02, 0x00, 0x00,       // fnstcw [rbx+0x282]
            0xDB, 0xE2,                               // fnclex
            0xDD, 0xBB, 0x84, 0x02, 0x00, 0x00,       // fnstsw [rbx+0x284]
        ];
        Run(3, 80, t => t.Check(body, X87Mem.I16, label: "fldcw/fnclex"));
    }

    [Fact]
    public void FnstenvStoresTheEnvironmentAndMasksExceptions()
    {
        byte[] body32 =
        [
            0xD9, 0xC9,                               // fxch st1 (a non-control instruction: FIP/FOP)
            0xD9, 0xB3, 0x80, 0x02, 0x00, 0x00,       // fnstenv [rbx+0x280]
            0x66, 0xC7, 0x83, 0x90, 0x02, 0x00, 0x00, 0x00, 0x00, // FCS
            0x66, 0xC7, 0x83, 0x98, 0x02, 0x00, 0x00, 0x00, 0x00, // FDS
        ];
        byte[] body16 =
        [
            .. X87Case.Mem(0xD9, 0),                  // fld dword [rbx+0x100] (FDP)
            0x66, 0xD9, 0xB3, 0x80, 0x02, 0x00, 0x00, // fnstenv m14 [rbx+0x280]
            0x66, 0xC7, 0x83, 0x88, 0x02, 0x00, 0x00, 0x00, 0x00, // FCS
            0x66, 0xC7, 0x83, 0x8C, 0x02, 0x00, 0x00, 0x00, 0x00, // FDS
        ];
        Run(4, 30, t => t.Check(body32, X87Mem.None, label: "fnstenv m28", alsoStored: new(0x280, Size32: true)));
        Run(5, 30, t => t.Check(body16, X87Mem.F32, cw: (ushort)(t.Control() | 0x2), label: "fnstenv m14", // DM masked: see X87InstructionTests.Loads
            alsoStored: new(0x280, Size32: false)));
    }

    /// <summary>
    /// The host keeps FOP and FDP as <see cref="X87HostPointers"/> says, so the differential cases
    /// mask them exactly where the host's rule is not the model's: after a non-control instruction
    /// with no exception, FOP and FDP are the FLDENV image's on a host that updates them only on an
    /// unmasked exception and the instruction's otherwise; after one with an unmasked exception they
    /// are the instruction's on every host, and the interpreter stores the same.
    /// </summary>
    [Fact]
    public void TheHostKeepsFopAndFdpAsDetected()
    {
        const ushort LoadedOpcode = 0x7AB;
        const uint LoadedDataPointer = 0x3333_3333;
        byte[] Code(byte[] body) =>
        [
            0xDB, 0xE3,                               // fninit
            .. X87Case.Mem(0xD9, 4),                  // fldenv [rbx+0x100]
            .. body,
            0xD9, 0xB3, 0x00, 0x02, 0x00, 0x00,       // fnstenv [rbx+0x200]
            0xDB, 0xE3,                               // fninit: nothing left pending
        ];
        byte[] fldMem = [0xD9, 0x83, 0x80, 0x01, 0x00, 0x00];          // fld dword [rbx+0x180]
        byte[] fdivrMem = [0xD9, 0xEE, 0xD8, 0xBB, 0x80, 0x01, 0x00, 0x00]; // fldz; fdivr dword [rbx+0x180]: 1/0
        var t = new DiffCase(_runner, 9);
        foreach (var (body, cw, unmaskedException) in new[] { (fldMem, (ushort)0x037F, false), (fdivrMem, (ushort)0x037B, true) })
        {
            byte[] data = t.RandomData();
            BitConverter.TryWriteBytes(data.AsSpan(0x100), 0xFFFF_0000u | cw);
            BitConverter.TryWriteBytes(data.AsSpan(0x104), 0xFFFF_0000u);               // FSW: TOP 0, no flags
            BitConverter.TryWriteBytes(data.AsSpan(0x108), 0xFFFF_FFFFu);               // all empty
            BitConverter.TryWriteBytes(data.AsSpan(0x110), (uint)LoadedOpcode << 16);  // FCS 0, FOP
            BitConverter.TryWriteBytes(data.AsSpan(0x114), LoadedDataPointer);          // FDP
            BitConverter.TryWriteBytes(data.AsSpan(0x180), 1.0f);
            var o = _runner.Run(Code(body), t.RandomContext(), data);
            Assert.Null(o.EmulatedException);
            // The last instruction's opcode: the low 3 bits of the escape byte, then the ModRM byte.
            ushort opcode = (ushort)(((body[^6] & 7) << 8) | body[^5]);
            uint dataPointer = (uint)(_runner.DataAddress + 0x180);
            ushort nativeOpcode = (ushort)(BitConverter.ToUInt16(o.NativeData, 0x212) & 0x7FF);
            uint nativeDataPointer = BitConverter.ToUInt32(o.NativeData, 0x214);
            bool opcodeKept = !unmaskedException && X87HostPointers.OpcodeOnlyOnUnmaskedException;
            bool dataPointerKept = !unmaskedException && X87HostPointers.DataPointerOnlyOnUnmaskedException;
            Assert.Equal(opcodeKept ? LoadedOpcode : opcode, nativeOpcode);
            Assert.Equal(dataPointerKept ? LoadedDataPointer : dataPointer, nativeDataPointer);
            Assert.Equal(BitConverter.ToUInt32(o.NativeData, 0x20C), BitConverter.ToUInt32(o.EmulatedData, 0x20C)); // FIP: every host updates it
            Assert.Equal(opcode, BitConverter.ToUInt16(o.EmulatedData, 0x212) & 0x7FF);
            Assert.Equal(dataPointer, BitConverter.ToUInt32(o.EmulatedData, 0x214));
        }
    }

    [Fact]
    public void FldenvLoadsTheEnvironment()
    {
        // A random 28-byte environment. Unmasked flags are allowed: FLDENV makes them pending (ES and
        // B recomputed from flags and masks, whatever ES and B the image holds), which is safe on the
        // host because only FNSAVE (no-wait, re-initialising) follows.
        byte[] body = [.. X87Case.Mem(0xD9, 4)]; // fldenv [rbx+0x100]
        Run(6, 80, t => t.Check(body, X87Mem.None, label: "fldenv", setup: data =>
        {
            ushort cw = t.Control();
            ushort sw = (ushort)t.Rng.Next(0x10000);
            BitConverter.TryWriteBytes(data.AsSpan(0x100), (uint)cw | 0xFFFF_0000);
            BitConverter.TryWriteBytes(data.AsSpan(0x104), (uint)sw | 0xFFFF_0000);
        }));
    }

    [Fact]
    public void SixteenBitFsaveAndFrstor()
    {
        byte[] body =
        [
            0x66, 0xDD, 0xB3, 0x00, 0x03, 0x00, 0x00, // fnsave m94 [rbx+0x300]
            0x66, 0xDD, 0xA3, 0x00, 0x03, 0x00, 0x00, // frstor m94 [rbx+0x300]
            0x66, 0xC7, 0x83, 0x08, 0x03, 0x00, 0x00, 0x00, 0x00, // FCS
            0x66, 0xC7, 0x83, 0x0C, 0x03, 0x00, 0x00, 0x00, 0x00, // FDS
        ];
        Run(7, 30, t => t.Check(body, X87Mem.None, label: "fnsave/frstor m94"));
    }

    [Fact]
    public void FfreeFincstpFdecstpFnopFwait()
    {
        byte[][] bodies =
        [
            [0xDD, 0xC0], [0xDD, 0xC3], [0xDD, 0xC7],  // ffree st0, st3, st7
            [0xD9, 0xF7], [0xD9, 0xF6],                // fincstp, fdecstp
            [0xD9, 0xD0],                              // fnop
            [0x9B],                                    // fwait (nothing pending)
            [0xDB, 0xE0], [0xDB, 0xE1], [0xDB, 0xE4],  // fneni, fndisi, fnsetpm: no-ops on the 387 and later
        ];
        Run(8, 60, t =>
        {
            byte[] b = bodies[t.Rng.Next(bodies.Length)];
            return t.Check(b, X87Mem.None, label: Convert.ToHexString(b));
        });
    }
}
