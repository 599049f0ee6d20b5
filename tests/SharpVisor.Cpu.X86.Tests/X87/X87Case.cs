using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Tests.Fpu;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>Memory operand formats of the x87 instructions under test (what to put at [rbx+0x100]).</summary>
public enum X87Mem { None, F32, F64, F80, I16, I32, I64, Bcd }

/// <summary>
/// One x87 differential case. The whole x87 state is loaded with FRSTOR from a random image at
/// [rbx] (random TOP, tags, registers, control word, non-pending flags), the instructions under test
/// run, then FNSAVE stores the whole state at [rbx+0x200] — so the differential runner, which
/// compares the data window, compares every x87 register, tag, flag and pointer. FNSAVE does not
/// wait and re-initialises the FPU, so an unmasked exception raised by the instruction under test
/// never faults on the host. FCS and FDS are zeroed in the image before the comparison: the host's
/// selectors are not the interpreter's, and Intel hosts with CPUID.(EAX=07H,ECX=0):EBX[13] store
/// zero (SDM Vol. 1 §8.1.8). FOP and FDP are compared where the host's rule for them is the one
/// modelled (<see cref="X87HostPointers"/>).
/// </summary>
internal sealed class X87Case
{
    public const int ImageOffset = 0, MemOffset = 0x100, SaveOffset = 0x200, SavedCwOffset = 0xFF0;
    /// <summary>The FNSAVE image every wrapped case ends with (64-bit mode: the 32-bit layout).</summary>
    static readonly X87HostPointers.StoredEnvironment Saved = new(SaveOffset, Size32: true);
    readonly DiffCase _diff;
    readonly X87Inputs _inputs;
    readonly DifferentialRunner _runner;

    public X87Case(DifferentialRunner runner, int seed)
    {
        _runner = runner;
        _diff = new DiffCase(runner, seed);
        _inputs = new X87Inputs(seed);
    }

    public Random Rng => _diff.Rng;
    public X87Inputs Inputs => _inputs;

    /// <summary>The ModRM encoding of [rbx+0x100] for an escape byte and a /reg field.</summary>
    public static byte[] Mem(byte escape, int reg) => [escape, (byte)(0x83 | (reg << 3)), 0x00, 0x01, 0x00, 0x00];

    public static byte[] Wrap(ReadOnlySpan<byte> body)
    {
        var code = new List<byte>();
        code.AddRange([0xD9, 0xBB, 0xF0, 0x0F, 0x00, 0x00]); // fnstcw [rbx+0xFF0]  (the host's FCW, restored at the end)
        code.AddRange([0xDB, 0xE3]);                         // fninit
        code.AddRange([0xDD, 0x23]);                         // frstor [rbx]
        code.AddRange(body.ToArray());
        code.AddRange([0xDD, 0xB3, 0x00, 0x02, 0x00, 0x00]); // fnsave [rbx+0x200]
        code.AddRange([0x66, 0xC7, 0x83, 0x10, 0x02, 0x00, 0x00, 0x00, 0x00]); // mov word [rbx+0x210], 0 (FCS)
        code.AddRange([0x66, 0xC7, 0x83, 0x18, 0x02, 0x00, 0x00, 0x00, 0x00]); // mov word [rbx+0x218], 0 (FDS)
        code.AddRange([0xD9, 0xAB, 0xF0, 0x0F, 0x00, 0x00]); // fldcw [rbx+0xFF0]
        return [.. code];
    }

    /// <summary>A random control word: every RC and PC; a third of the time some exceptions unmasked.</summary>
    public ushort Control(bool allowUnmasked = true)
    {
        ushort cw = _inputs.Control().Word;
        if (allowUnmasked && Rng.Next(3) == 0)
            cw = (ushort)((cw & ~0x3F) | Rng.Next(64));
        return cw;
    }

    public Float80 Value() => _inputs.Any();

    /// <summary>A random FRSTOR image (32-bit protected-mode layout) at <see cref="ImageOffset"/>.</summary>
    public void RandomImage(byte[] data, ushort cw, int emptyOneIn = 4, int? top = null)
    {
        int t = top ?? Rng.Next(8);
        // Only masked exception flags, so that nothing is pending when the instruction under test runs.
        int flags = Rng.Next(64) & cw & 0x3F;
        ushort sw = (ushort)((t << 11) | flags | (Rng.Next(16) switch { var b => ((b & 1) << 8) | ((b & 2) << 8) | ((b & 4) << 8) | ((b & 8) << 11) }));
        ushort tw = 0;
        for (int r = 0; r < 8; r++)
            tw |= (ushort)((Rng.Next(emptyOneIn) == 0 ? 3 : Rng.Next(3)) << (2 * r));
        Span<byte> img = data.AsSpan(ImageOffset, 108);
        BitConverter.TryWriteBytes(img[0..], (uint)cw);
        BitConverter.TryWriteBytes(img[4..], (uint)sw);
        BitConverter.TryWriteBytes(img[8..], (uint)tw);
        for (int st = 0; st < 8; st++)
        {
            Float80 v = Value();
            BitConverter.TryWriteBytes(img[(28 + st * 10)..], v.Mantissa);
            BitConverter.TryWriteBytes(img[(28 + st * 10 + 8)..], v.SignExponent);
        }
    }

    /// <summary>Puts a memory operand of <paramref name="format"/> at <see cref="MemOffset"/>.</summary>
    public void RandomOperand(byte[] data, X87Mem format)
    {
        Span<byte> m = data.AsSpan(MemOffset, 10);
        Float80 v = Value();
        switch (format)
        {
            case X87Mem.F32:
                uint f32 = Rng.Next(3) == 0 ? (uint)Rng.NextInt64() : X87Arith.ToFloat32(v, X87Control.Default, out _);
                BitConverter.TryWriteBytes(m, f32);
                break;
            case X87Mem.F64:
                ulong f64 = Rng.Next(3) == 0 ? (ulong)Rng.NextInt64() ^ ((ulong)Rng.Next(2) << 63) : X87Arith.ToFloat64(v, X87Control.Default, out _);
                BitConverter.TryWriteBytes(m, f64);
                break;
            case X87Mem.F80:
                BitConverter.TryWriteBytes(m, v.Mantissa);
                BitConverter.TryWriteBytes(m[8..], v.SignExponent);
                break;
            case X87Mem.I16 or X87Mem.I32 or X87Mem.I64:
                ulong x = _diff.Value();
                if (Rng.Next(2) == 0)
                    x = (ulong)(long)Rng.Next(-1000, 1000);
                BitConverter.TryWriteBytes(m, x);
                break;
            case X87Mem.Bcd:
                ulong low = 0;
                int digits = Rng.Next(19);
                for (int i = 0; i < 16 && i < digits; i++)
                    low |= (ulong)Rng.Next(10) << (4 * i);
                ushort high = (ushort)(digits > 16 ? Rng.Next(10) | (Rng.Next(10) << 4) : 0);
                high |= (ushort)(Rng.Next(2) << 15);
                BitConverter.TryWriteBytes(m, low);
                BitConverter.TryWriteBytes(m[8..], high);
                break;
        }
    }

    /// <summary>
    /// Runs the wrapped body from a fresh random state; returns the differences (empty when equal).
    /// Only the bits of <paramref name="swMask"/> of the stored status word are compared (cleared
    /// on both sides after the run, not by an instruction, which would change RFLAGS).
    /// <paramref name="alsoStored"/> is an x87 environment the body itself stores, whose FOP and FDP
    /// are treated as those of the final FNSAVE image are.
    /// </summary>
    public string Check(byte[] body, X87Mem format, ushort? cw = null, ulong flagsMask = 0, string? label = null, Action<byte[]>? setup = null, ushort swMask = 0xFFFF,
        X87HostPointers.StoredEnvironment? alsoStored = null)
    {
        byte[] data = _diff.RandomData();
        RandomImage(data, cw ?? Control());
        RandomOperand(data, format);
        setup?.Invoke(data);
        var ctx = _diff.RandomContext();
        byte[] code = Wrap(body);
        bool nonControl = X87HostPointers.RunsNonControlInstruction(body);
        X87HostPointers.StoredEnvironment[] stored = alsoStored is { } env ? [Saved, env] : [Saved];
        void Mask(byte[] native, byte[] emulated)
        {
            X87HostPointers.MaskUndefined(native, emulated, nonControl, stored);
            foreach (var image in new[] { native, emulated })
                BitConverter.TryWriteBytes(image.AsSpan(SaveOffset + 4), (ushort)(BitConverter.ToUInt16(image, SaveOffset + 4) & swMask));
        }
        string d = _diff.Check(code, ctx, data, flagsMask, label, 0xFFFF_FFFF, null, Mask);
        // A signal delivered to the host thread while the native side runs puts its frame on the
        // small stack window and, rarely, beyond it: a difference that does not repeat is that.
        if (d.Length == 0 || _diff.Check(code, ctx, data, flagsMask, label, 0xFFFF_FFFF, null, Mask).Length == 0)
            return "";
        // Re-run (deterministic) to show the x87 images.
        var o = _runner.Run(code, ctx, data);
        Mask(o.NativeData, o.EmulatedData);
        return $"{d}\n   in:  {Image(data, ImageOffset)}\n   nat: {Image(o.NativeData, SaveOffset)}\n   emu: {Image(o.EmulatedData, SaveOffset)}\n   mem: {Convert.ToHexString(data, MemOffset, 10)}";
    }

    static string Image(byte[] d, int at)
    {
        var s = $"cw={BitConverter.ToUInt16(d, at):x4} sw={BitConverter.ToUInt16(d, at + 4):x4} tw={BitConverter.ToUInt16(d, at + 8):x4} |";
        for (int i = 0; i < 8; i++)
            s += $" {BitConverter.ToUInt16(d, at + 28 + i * 10 + 8):x4}_{BitConverter.ToUInt64(d, at + 28 + i * 10):x16}";
        return s;
    }

    /// <summary>
    /// For the transcendental instructions, whose results the SDM does not define to the bit (Vol. 1
    /// §8.3.10): everything in the FNSAVE image must match except that register values may differ by
    /// one ulp (the model is correctly rounded, the host is not always; see
    /// X87TranscendentalDifferentialTests) and then PE may differ too, and UE at the smallest normal;
    /// C1 is not compared.
    /// </summary>
    public string CheckWithinOneUlp(byte[] body, ushort cw, string label, Action<byte[]>? setup = null)
    {
        byte[] data = _diff.RandomData();
        RandomImage(data, cw);
        setup?.Invoke(data);
        var ctx = _diff.RandomContext();
        bool nonControl = X87HostPointers.RunsNonControlInstruction(body);
        string d = CompareWithinOneUlp(_runner.Run(Wrap(body), ctx, data), data, label, nonControl);
        // See Check: a difference that does not repeat comes from the host (here typically a context
        // switch: AMD's FXSAVE/XRSTOR do not keep FIP/FDP/FOP, so the kernel's restore changes them).
        return d.Length == 0 ? d : CompareWithinOneUlp(_runner.Run(Wrap(body), ctx, data), data, label, nonControl);
    }

    static string CompareWithinOneUlp(DifferentialRunner.Outcome o, byte[] data, string label, bool nonControl)
    {
        if (o.EmulatedException is int v)
            return $"{label}: exception {v}";
        byte[] n = o.NativeData, e = o.EmulatedData;
        X87HostPointers.MaskUndefined(n, e, nonControl, [Saved]);
        bool ulpApart = false, tinyApart = false;
        for (int st = 0; st < 8; st++)
        {
            int at = SaveOffset + 28 + st * 10;
            var a = new Float80(BitConverter.ToUInt64(n, at), BitConverter.ToUInt16(n, at + 8));
            var b = new Float80(BitConverter.ToUInt64(e, at), BitConverter.ToUInt16(e, at + 8));
            long d = Fpu.X87TranscendentalDifferentialTests.UlpDistance(a, b);
            if (d > 1)
                return $"{label}: ST{st} native {a} emulated {b}{Describe(data)}";
            ulpApart |= d == 1;
            tinyApart |= d == 1 && Fpu.X87TranscendentalDifferentialTests.NearTiny(a, b);
        }
        // C1 ("rounded up") is relative to the true value, which the host's ~2^-70 internal result
        // can put on the other side of the same rounded result: never compared. One ulp apart, PE
        // may differ (an exact result and its neighbour), and at the smallest normal UE, which a
        // tiny inexact result sets (SDM Vol. 1 §4.9.1.5).
        ushort swMask = (ushort)~(0x200 | (ulpApart ? 0x20 : 0) | (tinyApart ? 0x10 : 0));
        for (int k = 0; k < 28; k++)
        {
            byte m = k == 4 ? (byte)swMask : k == 5 ? (byte)(swMask >> 8) : (byte)0xFF;
            if (((n[SaveOffset + k] ^ e[SaveOffset + k]) & m) != 0)
                return $"{label}: image byte {k} native {n[SaveOffset + k]:x2} emulated {e[SaveOffset + k]:x2}{Describe(data)}";
        }
        return "";
    }

    static string Describe(byte[] data)
    {
        var s = $" (in: cw {BitConverter.ToUInt16(data, 0):x4} sw {BitConverter.ToUInt16(data, 4):x4} tw {BitConverter.ToUInt16(data, 8):x4}";
        for (int st = 0; st < 2; st++)
            s += $" ST{st} {new Float80(BitConverter.ToUInt64(data, 28 + st * 10), BitConverter.ToUInt16(data, 36 + st * 10))}";
        return s + ")";
    }

    /// <summary>Runs <paramref name="body"/> as is (no FRSTOR/FNSAVE wrapping) with <paramref name="data"/>.</summary>
    public string CheckRaw(byte[] code, byte[] data, ulong flagsMask = 0, string? label = null) =>
        _diff.Check(code, _diff.RandomContext(), data, flagsMask, label);

    public byte[] RandomData() => _diff.RandomData();

    public static int Iterations(int bounded) =>
        int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) && n > 0 ? n : bounded;
}
