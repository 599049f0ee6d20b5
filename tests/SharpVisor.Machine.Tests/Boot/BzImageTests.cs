using System.Buffers.Binary;
using SharpCompress.Compressors;
using SharpCompress.Compressors.BZip2;
using SharpVisor.Core;
using SharpVisor.Machine.Boot;
using static SharpVisor.Machine.Tests.Boot.SyntheticImages;

namespace SharpVisor.Machine.Tests.Boot;

public sealed class BzImageTests
{
    static byte[] Valid() => BzImage(Gzip(Elf64()));

    static UserErrorException Fails(byte[] file) => Assert.Throws<UserErrorException>(() => SharpVisor.Machine.Boot.BzImage.Parse(file, "test.bz"));

    [Fact]
    public void ParsesTheSetupHeader()
    {
        var bz = SharpVisor.Machine.Boot.BzImage.Parse(Valid());
        Assert.Equal(0x020F, bz.Version);
        Assert.Equal(4, bz.SetupSects);
        Assert.Equal(5 * 512, bz.ProtectedModeOffset);
        Assert.Equal(KernelBase, bz.PrefAddress);
        Assert.Equal(0x20_0000u, bz.KernelAlignment);
        Assert.True(bz.Relocatable);
        Assert.Equal(0x7FFu, bz.CmdlineSize);
        Assert.Equal(PayloadFormat.Gzip, KernelDecompressor.Detect(bz.Payload.Span));
        // The setup header to copy runs from 0x1F1 to 0x202 + the jump offset (boot.rst).
        Assert.Equal(0x26C - 0x1F1, bz.SetupHeader.Length);
    }

    [Fact]
    public void SetupSectsZeroMeansFour()
    {
        byte[] file = Valid();
        file[0x1F1] = 0;
        Assert.Equal(4, SharpVisor.Machine.Boot.BzImage.Parse(file).SetupSects);
    }

    [Fact]
    public void RejectsTooShortFile() => Assert.Contains("too short", Fails(new byte[0x100]).Message);

    [Fact]
    public void RejectsFileWithoutHdrS()
    {
        byte[] file = Valid();
        file[0x202] = (byte)'X';
        Assert.Contains("not a Linux bzImage", Fails(file).Message);
    }

    [Fact]
    public void RejectsFileWithoutBootFlag()
    {
        byte[] file = Valid();
        file[0x1FE] = 0;
        Assert.Contains("not a Linux bzImage", Fails(file).Message);
    }

    [Fact]
    public void RejectsProtocolOlderThan212() =>
        Assert.Contains("2.11 is too old", Fails(BzImage(Gzip(Elf64()), new BzOptions { Version = 0x020B })).Message);

    [Fact]
    public void RejectsTruncatedHeader() => Assert.Contains("truncated", Fails(Valid()[..0x240]).Message);

    [Fact]
    public void RejectsTruncatedSetupSectors() => Assert.Contains("truncated", Fails(Valid()[..(4 * 512)]).Message);

    [Fact]
    public void RejectsNon64BitKernel() =>
        Assert.Contains("XLF_KERNEL_64", Fails(BzImage(Gzip(Elf64()), new BzOptions { XLoadFlags = 0 })).Message);

    [Fact]
    public void RejectsPayloadPastEndOfFile()
    {
        byte[] file = Valid();
        Assert.Contains("out of range", Fails(file[..(file.Length - 10)]).Message);
    }

    [Fact]
    public void RejectsPayloadOffsetOutOfRange() =>
        Assert.Contains("out of range", Fails(BzImage(Gzip(Elf64()), new BzOptions { PayloadOffsetOverride = 0x7FFF_FFF0 })).Message);

    [Fact]
    public void RejectsEmptyPayload() =>
        Assert.Contains("out of range", Fails(BzImage(Gzip(Elf64()), new BzOptions { PayloadLengthOverride = 0 })).Message);

    [Fact]
    public void RejectsBadKernelAlignment() =>
        Assert.Contains("kernel_alignment", Fails(BzImage(Gzip(Elf64()), new BzOptions { KernelAlignment = 0x30_0000 })).Message);

    [Fact]
    public void RejectsPrefAddressBelowOneMiB() =>
        Assert.Contains("pref_address", Fails(BzImage(Gzip(Elf64()), new BzOptions { PrefAddress = 0x8000, KernelAlignment = 0x1000 })).Message);

    [Fact]
    public void RejectsZeroInitSize() =>
        Assert.Contains("init_size", Fails(BzImage(Gzip(Elf64()), new BzOptions { InitSize = 0 })).Message);

    [Fact]
    public void GzipPayloadDecompressesToTheElf()
    {
        byte[] elf = Elf64();
        Assert.Equal(elf, KernelDecompressor.Decompress(Gzip(elf)));
    }

    [Fact]
    public void ZstdPayloadDecompressesToTheElf()
    {
        byte[] elf = Elf64();
        using var output = new MemoryStream();
        using (var zstd = new SharpCompress.Compressors.ZStandard.CompressionStream(output, 3))
        {
            zstd.Write(elf);
        }
        byte[] payload = WithSizeAppend(output.ToArray(), elf.Length);
        Assert.Equal(PayloadFormat.Zstd, KernelDecompressor.Detect(payload));
        Assert.Equal(elf, KernelDecompressor.Decompress(payload));
    }

    [Fact]
    public void Bzip2PayloadDecompressesToTheElf()
    {
        byte[] elf = Elf64();
        using var output = new MemoryStream();
        using (var bz2 = BZip2Stream.Create(output, CompressionMode.Compress, false, leaveOpen: true))
        {
            bz2.Write(elf);
        }
        byte[] payload = WithSizeAppend(output.ToArray(), elf.Length);
        Assert.Equal(PayloadFormat.Bzip2, KernelDecompressor.Detect(payload));
        Assert.Equal(elf, KernelDecompressor.Decompress(payload));
    }

    [Theory]
    [InlineData(new byte[] { 0x02, 0x21, 0x4C, 0x18, 0, 0, 0, 0 }, "LZ4")]
    [InlineData(new byte[] { 0x89, 0x4C, 0x5A, 0x4F, 0, 0, 0, 0 }, "LZO")]
    public void UnsupportedFormatsNameTheFormatAndSuggestXz(byte[] payload, string format)
    {
        var e = Assert.Throws<UserErrorException>(() => KernelDecompressor.Decompress(payload));
        Assert.Contains(format, e.Message);
        Assert.Contains("CONFIG_KERNEL_XZ", e.Message);
    }

    [Fact]
    public async Task LzmaPayloadDecompressesToTheElf()
    {
        // The kernel build pipes vmlinux.bin through `lzma -9` (size unknown: end marker) and appends the size.
        string? xz = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "xz")).FirstOrDefault(File.Exists);
        if (xz is null)
        {
            Assert.Fail("xz (package xz-utils) is needed to make an LZMA test payload");
        }
        byte[] elf = Elf64();
        var psi = new System.Diagnostics.ProcessStartInfo(xz, "--format=lzma -9 -c") { RedirectStandardInput = true, RedirectStandardOutput = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var compressed = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(compressed);
        await p.StandardInput.BaseStream.WriteAsync(elf);
        p.StandardInput.Close();
        await copy;
        await p.WaitForExitAsync();
        byte[] payload = WithSizeAppend(compressed.ToArray(), elf.Length);
        Assert.Equal(PayloadFormat.Lzma, KernelDecompressor.Detect(payload));
        Assert.Equal(elf, KernelDecompressor.Decompress(payload));
    }

    [Fact]
    public void UnknownPayloadIsAClearError()
    {
        var e = Assert.Throws<UserErrorException>(() => KernelDecompressor.Decompress(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
        Assert.Contains("unrecognised", e.Message);
    }

    [Fact]
    public void CorruptGzipIsAUserError()
    {
        byte[] payload = Gzip(Elf64());
        payload[payload.Length / 2] ^= 0xFF;
        payload[payload.Length / 2 + 1] ^= 0x55;
        var e = Assert.Throws<UserErrorException>(() => KernelDecompressor.Decompress(payload));
        Assert.Contains("corrupt", e.Message);
    }

    [Fact]
    public void CorruptXzIsAUserError()
    {
        // Stream header magic followed by garbage: the XZ reader must fail, and fail as a user error.
        byte[] payload = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0x00, 0x01, 0x69, 0x22, 0xDE, 0x36, .. new byte[64]];
        var e = Assert.Throws<UserErrorException>(() => KernelDecompressor.Decompress(payload));
        Assert.Contains("Xz", e.Message);
    }

    [Fact]
    public void SizeTrailerIsOnlyAHint()
    {
        // A wrong trailer (much smaller than the real output) must not truncate the kernel.
        byte[] elf = Elf64();
        using var output = new MemoryStream();
        using (var bz2 = BZip2Stream.Create(output, CompressionMode.Compress, false, leaveOpen: true))
        {
            bz2.Write(elf);
        }
        byte[] payload = WithSizeAppend(output.ToArray(), 16);
        Assert.Equal(elf, KernelDecompressor.Decompress(payload));
    }

    [Fact]
    public void GzipPayloadWithSizeTrailerStillDecompresses()
    {
        byte[] elf = Elf64();
        Assert.Equal(elf, KernelDecompressor.Decompress(WithSizeAppend(Gzip(elf), elf.Length)));
    }
}
