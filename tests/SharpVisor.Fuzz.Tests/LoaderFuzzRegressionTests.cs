using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Fuzz.Tests;

/// <summary>
/// Inputs the kernel-loader fuzz targets found (fuzz/corpus/{kernel,multiboot}/crash-*): each is now
/// loaded or refused with a one-line error.
/// </summary>
public sealed class LoaderFuzzRegressionTests
{
    static FuzzOutcome Replay(string target, string name)
    {
        using var fuzz = FuzzTarget.Create(target);
        return fuzz.Run(File.ReadAllBytes(Corpus.File(target, name)));
    }

    /// <summary>
    /// CsCheck mutation of the a.out-kludge seed: bss_end_addr 0x8c101023 in a 2.75 GiB guest is
    /// valid, but the loader built the 2.2 GB of bss zeros as one array: OverflowException, a stack
    /// trace for the user. (Through --kernel too: the kernel target found the same.)
    /// </summary>
    [Theory]
    [InlineData("multiboot", "crash-aout-bss-above-2gib")]
    [InlineData("kernel", "crash-multiboot-aout-bss-above-2gib")]
    public void Multiboot_bss_larger_than_2_GiB_loads(string target, string name)
    {
        var outcome = Replay(target, name);
        Assert.True(outcome.Accepted, outcome.Error);
    }

    /// <summary>What the guest relies on from the same input: the whole bss reads as zeros up to bss_end_addr.</summary>
    [Fact]
    public void Multiboot_bss_larger_than_2_GiB_is_zeroed_to_its_end()
    {
        byte[] kernel = File.ReadAllBytes(Corpus.File("multiboot", "crash-aout-bss-above-2gib"));
        using var memory = new GuestMemory(GuestMemory.MaxLowRam);
        var firmware = PcFirmware.Install(memory, AcpiMachineDescription.ForMachine(memory, cpuCount: 1));
        const ulong bssEnd = 0x8c10_1023;
        Assert.True(memory.WriteU32(bssEnd - 4, 0xDEAD_BEEF));
        Assert.True(memory.WriteU32(0x4000_0000, 0xDEAD_BEEF));

        var result = MultibootLoader.Load(memory, kernel, "", [], firmware.E820);

        Assert.Equal(bssEnd, result.ImageEnd);
        Assert.Equal(0u, memory.ReadU32(bssEnd - 4));
        Assert.Equal(0u, memory.ReadU32(0x4000_0000));
    }

    /// <summary>
    /// afl-fuzz (payload target), saved as hangs: 20-byte "LZMA" payloads whose decoder, fed garbage,
    /// never runs out of output. The loader kept doubling its buffer (3.2 GB resident, 10 s) until
    /// Array.Resize overflowed, and the user read "corrupt Lzma kernel payload: Non-negative number
    /// required. (Parameter 'newSize')". A tiny payload may now decompress to at most 64 MiB.
    /// </summary>
    [Theory]
    [InlineData("crash-lzma-unbounded-output")]
    [InlineData("crash-lzma-unbounded-output-2")]
    public void Payload_that_decompresses_without_end_is_refused_at_a_bound(string name)
    {
        var outcome = Replay("payload", name);
        Assert.False(outcome.Accepted);
        Assert.Contains("decompresses to more than 64 MiB", outcome.Error);
    }
}
