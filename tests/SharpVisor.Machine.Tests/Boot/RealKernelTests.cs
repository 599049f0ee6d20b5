using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Machine.Boot;
using Xunit.Abstractions;

namespace SharpVisor.Machine.Tests.Boot;

/// <summary>
/// Debian's stock kernel (the default guest): fetched into the shared cache on first use, as the
/// product does on first run.
/// </summary>
public sealed class RealKernelTests(ITestOutputHelper output)
{
    [Fact]
    public void DebianBzImageParsesDecompressesAndLoads()
    {
        string path;
        try
        {
            path = DebianKernelCache.EnsureKernel();
        }
        catch (UserErrorException e)
        {
            Assert.Fail($"cannot fetch Debian's kernel for this test: {e.Message}");
            return;
        }
        byte[] file = File.ReadAllBytes(path);
        var bz = BzImage.Parse(file, path);
        Assert.True(bz.Version >= 0x020C);
        Assert.Equal(PayloadFormat.Xz, KernelDecompressor.Detect(bz.Payload.Span));

        using var memory = new GuestMemory(256UL << 20);
        var acpi = AcpiRegion.AtTopOfLowRam(memory);
        var e820 = E820Map.ForMachine(memory, acpi);
        byte[] initrd = new byte[3 * 4096 + 17];
        Random.Shared.NextBytes(initrd);
        var timer = Stopwatch.StartNew();
        var result = LinuxLoader.Load(memory, new LinuxBootRequest(file, initrd, "console=ttyS0 quiet", e820, acpi.Base, KernelName: path));
        // Measured on the 2-core build machine: XZ decompression of the 8 MiB payload to 66 MiB
        // takes about 0.8-0.9 s through liblzma (1.25 s with the managed decoder).
        output.WriteLine($"decompress {result.DecompressTime.TotalMilliseconds:0} ms, load {timer.ElapsedMilliseconds} ms");

        Assert.Equal(BootMode.Long64, result.Entry.Mode);
        Assert.Equal(bz.PrefAddress, result.Entry.Rip); // startup_64 at the link-time physical address
        Assert.Equal(BootLayout.ZeroPage, result.Entry.Rsi);
        Assert.NotNull(result.PvhEntry);
        Assert.InRange(result.PvhEntry!.Value, result.KernelStart, result.KernelEnd);
        // The initrd landed in RAM, after the kernel's init_size, and is intact.
        Assert.True(result.InitrdAddress >= result.KernelEnd);
        var back = new byte[initrd.Length];
        Assert.True(memory.TryRead(result.InitrdAddress, back));
        Assert.Equal(initrd, back);
        Assert.Equal(result.InitrdAddress, (ulong)memory.ReadU32(BootLayout.ZeroPage + 0x218));
        // startup_64 (arch/x86/kernel/head_64.S) first points RSP at the init stack: lea rsp, [rip+disp32].
        var code = new byte[3];
        Assert.True(memory.TryRead(result.Entry.Rip, code));
        Assert.Equal(new byte[] { 0x48, 0x8D, 0x25 }, code);
        // pvh_start_xen (arch/x86/platform/pvh/head.S) starts with cld; lgdt.
        var pvhCode = new byte[4];
        Assert.True(memory.TryRead(result.PvhEntry.Value, pvhCode));
        Assert.Equal(new byte[] { 0xFC, 0x0F, 0x01, 0x15 }, pvhCode);

        // The same kernel also boots through PVH.
        using var memory2 = new GuestMemory(256UL << 20);
        var pvh = LinuxLoader.Load(memory2, new LinuxBootRequest(file, null, "console=ttyS0", e820, acpi.Base, LinuxEntryKind.Pvh, path));
        Assert.Equal(BootMode.Protected32, pvh.Entry.Mode);
        Assert.Equal(result.PvhEntry, pvh.Entry.Rip);
        Assert.Equal(PvhStartInfo.Magic, memory2.ReadU32(BootLayout.StartInfo));
    }

    /// <summary>The kernel decompressed through the system's liblzma is the managed decoder's, byte for
    /// byte, and a corrupted stream is refused by both (the native path then leaves the error to
    /// the managed one).</summary>
    [Fact]
    public void LiblzmaAndTheManagedDecoderGiveTheSameKernel()
    {
        var bz = BzImage.Parse(File.ReadAllBytes(DebianKernelCache.EnsureKernel()), "kernel");
        int expected = BitConverter.ToInt32(bz.Payload.Span[^4..]);
        byte[]? native = KernelDecompressor.DecompressXzNative(bz.Payload.Span, expected);
        Assert.NotNull(native); // Debian always has liblzma (dpkg depends on it)
        KernelDecompressor.UseNativeXz = false;
        try
        {
            Assert.Equal(KernelDecompressor.Decompress(bz.Payload), native);
            KernelDecompressor.UseNativeXz = true;
            byte[] corrupt = bz.Payload.ToArray();
            corrupt[corrupt.Length / 2] ^= 0x40;
            Assert.Null(KernelDecompressor.DecompressXzNative(corrupt, expected));
            Assert.Null(KernelDecompressor.DecompressXzNative(bz.Payload.Span, expected - 1)); // the buffer must hold it all
        }
        finally
        {
            KernelDecompressor.UseNativeXz = true;
        }
    }
}
