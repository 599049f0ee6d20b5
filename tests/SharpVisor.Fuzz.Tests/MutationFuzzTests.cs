using System.Buffers.Binary;
using CsCheck;

namespace SharpVisor.Fuzz.Tests;

/// <summary>
/// A bounded random-mutation run of every target in the test suite (CsCheck; afl-fuzz does the
/// coverage-guided runs, see fuzz/run.sh): seeds from fuzz/corpus with bits flipped, bytes and
/// boundary integers written, cut and spliced. A crash or hang fails with the input written to
/// fuzz/findings/tests/TARGET/; move it into fuzz/corpus/TARGET/ as crash-NAME with a regression test.
/// </summary>
public sealed class MutationFuzzTests
{
    /// <summary>Values that sit on the checks parsers make: zero, one, sign and width boundaries.</summary>
    static readonly ulong[] Boundaries =
    [
        0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0xFFF, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
        0x10_0000, 0x100_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000,
        0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue,
    ];

    /// <summary>One edit: kind, position and value (positions wrap to the input's length).</summary>
    static readonly Gen<(int Kind, int Position, ulong Value)> Edit =
        Gen.Select(Gen.Int[0, 7], Gen.Int[0, int.MaxValue], Gen.OneOf(Gen.ULong, Gen.Int[0, Boundaries.Length - 1].Select(i => Boundaries[i])));

    static byte[] Mutate(byte[] seed, (int Kind, int Position, ulong Value)[] edits)
    {
        var bytes = new List<byte>(seed);
        foreach (var (kind, position, value) in edits)
        {
            if (bytes.Count == 0)
            {
                bytes.Add((byte)value);
            }
            int at = position % bytes.Count;
            var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes);
            switch (kind)
            {
                case 0: // flip one bit
                    span[at] ^= (byte)(1 << (int)(value & 7));
                    break;
                case 1: // set one byte
                    span[at] = (byte)value;
                    break;
                case 2 when at + 4 <= span.Length: // a 32-bit field, little-endian (boot protocol, ELF, Multiboot)
                    BinaryPrimitives.WriteUInt32LittleEndian(span[at..], (uint)value);
                    break;
                case 3 when at + 8 <= span.Length: // a 64-bit field, little-endian
                    BinaryPrimitives.WriteUInt64LittleEndian(span[at..], value);
                    break;
                case 4 when at + 4 <= span.Length: // a 32-bit field, big-endian (qcow2)
                    BinaryPrimitives.WriteUInt32BigEndian(span[at..], (uint)value);
                    break;
                case 5 when at + 8 <= span.Length: // a 64-bit field, big-endian (qcow2)
                    BinaryPrimitives.WriteUInt64BigEndian(span[at..], value);
                    break;
                case 6: // cut the input short
                    bytes.RemoveRange(at, bytes.Count - at);
                    break;
                case 7: // repeat a chunk somewhere else
                    int length = (int)(value % 64) + 1;
                    int from = (int)((value >> 8) % (ulong)bytes.Count);
                    var chunk = bytes.Skip(from).Take(length).ToArray();
                    bytes.InsertRange(at, chunk);
                    break;
            }
        }
        return [.. bytes];
    }

    [Theory]
    // Counts sized for about 40 s in all on the project's 2-core machine: a Multiboot seed with 2 GiB
    // of bss costs a second an input, a payload up to its 64 MiB bound.
    [InlineData("kernel", 600)]
    [InlineData("bzimage", 3000)]
    [InlineData("payload", 600)]
    [InlineData("elf", 2000)]
    [InlineData("multiboot", 800)]
    [InlineData("qcow2", 5000)]
    public void Random_mutations_of_the_corpus_give_only_documented_errors(string target, int iterations)
    {
        byte[][] seeds = [.. Corpus.Files(target).Select(File.ReadAllBytes)];
        using var fuzz = FuzzTarget.Create(target);
        Gen.Select(Gen.Int[0, seeds.Length - 1], Edit.Array[1, 8]).Sample((seed, edits) =>
        {
            byte[] input = Mutate(seeds[seed], edits);
            switch (Program.ReplayOne(fuzz, input, TimeSpan.FromSeconds(30)))
            {
                case Program.ReplayResult.Crash crash:
                    throw new InvalidOperationException($"the {target} target crashed on {Corpus.SaveFinding(target, input)}: {crash.Exception}");
                case Program.ReplayResult.Hang:
                    throw new InvalidOperationException($"the {target} target hung on {Corpus.SaveFinding(target, input)}");
            }
        }, iter: iterations, threads: 1);
    }
}
