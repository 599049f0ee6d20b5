using System.Buffers.Binary;
using System.IO.Compression;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.LZMA;
using SharpCompress.Compressors.Xz;
using SharpCompress.Compressors.ZStandard;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>Compression formats a bzImage payload can use (arch/x86/boot/compressed/Makefile, CONFIG_KERNEL_*).</summary>
public enum PayloadFormat
{
    Unknown,
    Elf,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// <summary>
/// Decompresses a bzImage payload on the host so the guest starts directly in the decompressed
/// kernel. The result is the vmlinux ELF image (relocation data that may follow it is not needed
/// when the kernel is loaded at its link-time physical address).
/// </summary>
public static partial class KernelDecompressor
{
    static ReadOnlySpan<byte> GzipMagic => [0x1F, 0x8B];                       // RFC 1952 ID1 ID2
    static ReadOnlySpan<byte> XzMagic => [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];
    static ReadOnlySpan<byte> ZstdMagic => [0x28, 0xB5, 0x2F, 0xFD];           // RFC 8878 3.1.1
    static ReadOnlySpan<byte> Lz4LegacyMagic => [0x02, 0x21, 0x4C, 0x18];      // lz4 -l, what the kernel Makefile uses
    static ReadOnlySpan<byte> LzoMagic => [0x89, 0x4C, 0x5A, 0x4F];            // lzop

    /// <summary>No kernel decompresses to more than this (Debian's: 66 MiB).</summary>
    const int MaxDecompressedSize = 512 << 20;

    /// <summary>
    /// Kernels compress 3 to 10 fold; a payload whose output outgrows this ratio (above a floor that
    /// leaves room for tiny test kernels) is garbage or a bomb. Without a bound, a 20-byte LZMA
    /// payload made the decoder produce gigabytes (found by fuzzing, fuzz/corpus/payload/crash-*).
    /// </summary>
    const long MaxRatio = 1024, RatioFloor = 64 << 20;

    /// <summary>Identifies the payload format from its magic bytes.</summary>
    public static PayloadFormat Detect(ReadOnlySpan<byte> payload)
    {
        if (payload.StartsWith("\x7F"u8) && payload.Length >= 4 && payload[1..4].SequenceEqual("ELF"u8))
        {
            return PayloadFormat.Elf;
        }
        if (payload.StartsWith(GzipMagic))
        {
            return PayloadFormat.Gzip;
        }
        if (payload.StartsWith("BZh"u8))
        {
            return PayloadFormat.Bzip2;
        }
        if (payload.StartsWith(XzMagic))
        {
            return PayloadFormat.Xz;
        }
        if (payload.StartsWith(ZstdMagic))
        {
            return PayloadFormat.Zstd;
        }
        if (payload.StartsWith(Lz4LegacyMagic))
        {
            return PayloadFormat.Lz4;
        }
        if (payload.StartsWith(LzoMagic))
        {
            return PayloadFormat.Lzo;
        }
        if (payload.Length >= 17 && payload[0] == 0x5D && payload[1] == 0)
        {
            return PayloadFormat.Lzma; // .lzma "alone" header: properties byte (lc=3,lp=0,pb=2) then dictionary size
        }
        return PayloadFormat.Unknown;
    }

    /// <summary>Decompresses <paramref name="payload"/> to the vmlinux ELF image.</summary>
    public static byte[] Decompress(ReadOnlyMemory<byte> payload, string name = "kernel")
    {
        PayloadFormat format = Detect(payload.Span);
        // The last 4 bytes of every kernel payload are the decompressed size, little-endian: gzip's
        // own ISIZE, or the size_append trailer the build adds for the other formats
        // (scripts/Makefile.lib; arch/x86/boot/compressed/mkpiggy.c reads it). Only a sizing hint.
        int limit = (int)Math.Min(MaxDecompressedSize, Math.Max(RatioFloor, payload.Length * MaxRatio));
        int expected = payload.Length >= 4 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(payload.Span[^4..]), (uint)limit) : 0;
        byte[] ReadAll(Stream stream) => KernelDecompressor.ReadAll(stream, expected, limit)
            ?? throw new UserErrorException($"{name}: the {format} kernel payload of {payload.Length} bytes decompresses to more than {limit >> 20} MiB; it is corrupt or not a kernel");
        try
        {
            return format switch
            {
                PayloadFormat.Elf => payload.ToArray(),
                PayloadFormat.Gzip => ReadAll(new GZipStream(AsStream(payload), System.IO.Compression.CompressionMode.Decompress)),
                PayloadFormat.Xz => DecompressXzNative(payload.Span, expected) ?? ReadAll(new XZStream(AsStream(payload))),
                // The zstd reader takes the 4-byte size trailer for the start of another frame; strip it.
                PayloadFormat.Zstd => ReadAll(new DecompressionStream(AsStream(payload.Length > 4 ? payload[..^4] : payload))),
                PayloadFormat.Bzip2 => ReadAll(BZip2Stream.Create(AsStream(payload), SharpCompress.Compressors.CompressionMode.Decompress, decompressConcatenated: false)),
                PayloadFormat.Lzma => ReadAll(OpenLzma(payload)),
                PayloadFormat.Lzo or PayloadFormat.Lz4 => throw new UserErrorException(
                    $"{name}: the kernel payload is {format.ToString().ToUpperInvariant()}-compressed, which SharpVisor cannot decompress; use a kernel built with CONFIG_KERNEL_XZ, CONFIG_KERNEL_GZIP, CONFIG_KERNEL_ZSTD, CONFIG_KERNEL_BZIP2 or CONFIG_KERNEL_LZMA (Debian's kernels use XZ)"),
                _ => throw new UserErrorException(
                    $"{name}: unrecognised kernel payload format (first bytes {Convert.ToHexString(payload.Span[..Math.Min(8, payload.Length)])}); expected XZ, gzip, zstd, bzip2 or LZMA"),
            };
        }
        catch (Exception e) when (e is not UserErrorException and not OutOfMemoryException)
        {
            throw new UserErrorException($"{name}: corrupt {format} kernel payload: {e.Message}");
        }
    }

    /// <summary>
    /// XZ through the system's liblzma (xz-utils' library; dpkg needs it, so every Debian has it):
    /// 0.8-0.9 s for Debian's kernel against 1.25 s for the managed decoder, on every boot's critical
    /// path. One call decodes the stream into a buffer of the trailer's size (bounded by the
    /// caller's limit) and verifies the stream's checks. Null — and the managed decoder decides,
    /// with its error messages — when the library is missing, the trailer is not the exact size,
    /// or the stream is bad; <see cref="UseNativeXz"/> turns this path off (tests compare both).
    /// </summary>
    internal static unsafe byte[]? DecompressXzNative(ReadOnlySpan<byte> payload, int expected)
    {
        if (!UseNativeXz || !OperatingSystem.IsLinux() || expected <= 0)
        {
            return null;
        }
        byte[] output = GC.AllocateUninitializedArray<byte>(expected);
        ulong memoryLimit = ulong.MaxValue;
        nuint inPosition = 0, outPosition = 0;
        int status;
        try
        {
            fixed (byte* input = payload, outputBytes = output)
            {
                status = LzmaStreamBufferDecode(ref memoryLimit, 0, null, input, ref inPosition, (nuint)payload.Length, outputBytes, ref outPosition, (nuint)output.Length);
            }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            UseNativeXz = false; // not on this system: the managed decoder from now on
            return null;
        }
        const int LzmaOk = 0;
        return status == LzmaOk && outPosition == (nuint)output.Length ? output : null;
    }

    /// <summary>Whether XZ payloads go through liblzma first (see <see cref="DecompressXzNative"/>).</summary>
    internal static bool UseNativeXz = true;

    // lzma_ret lzma_stream_buffer_decode(uint64_t *memlimit, uint32_t flags, const lzma_allocator *,
    //     const uint8_t *in, size_t *in_pos, size_t in_size, uint8_t *out, size_t *out_pos, size_t out_size)
    // (liblzma's lzma/container.h); flags 0 verifies the stream's integrity check.
    [System.Runtime.InteropServices.LibraryImport("liblzma.so.5", EntryPoint = "lzma_stream_buffer_decode")]
    private static unsafe partial int LzmaStreamBufferDecode(ref ulong memoryLimit, uint flags, void* allocator, byte* input, ref nuint inPosition, nuint inSize, byte* output, ref nuint outPosition, nuint outSize);

    // The .lzma ("LZMA alone") format: 5 property bytes, the 64-bit uncompressed size (all ones
    // when unknown: then the stream ends with an end marker), then the LZMA data.
    static Stream OpenLzma(ReadOnlyMemory<byte> payload)
    {
        byte[] properties = payload.Span[..5].ToArray();
        long size = BinaryPrimitives.ReadInt64LittleEndian(payload.Span[5..13]);
        // The data runs up to the 4-byte size trailer the kernel build appends.
        var data = AsStream(payload[13..^4]);
        return LzmaStream.Create(properties, data, data.Length, size);
    }

    static MemoryStream AsStream(ReadOnlyMemory<byte> payload) => new(payload.ToArray(), writable: false);

    // Reads the whole stream, asking for everything that is left in each Read. SharpCompress
    // 0.50.8's XZ x86 BCJ filter corrupts bytes when a Read ends in the middle of a branch
    // instruction (seen with Debian's 6.1 kernel and 1 MiB reads; the block CRC then fails), so the
    // buffer is sized from the size_append trailer and read in as few calls as possible. The XZ
    // block check still guards the result: a wrong guess is an error, never a silent corruption.
    // Null when the output exceeds limit bytes.
    static byte[]? ReadAll(Stream stream, int expected, int limit)
    {
        using (stream)
        {
            var buffer = new byte[Math.Min(Math.Max(expected, 1 << 20), limit) + 1];
            int length = 0;
            while (true)
            {
                if (length == buffer.Length)
                {
                    if (length > limit)
                    {
                        return null;
                    }
                    Array.Resize(ref buffer, (int)Math.Min(buffer.Length * 2L, limit + 1L));
                }
                int n = stream.Read(buffer, length, buffer.Length - length);
                if (n == 0)
                {
                    break;
                }
                length += n;
            }
            Array.Resize(ref buffer, length);
            return buffer;
        }
    }
}
