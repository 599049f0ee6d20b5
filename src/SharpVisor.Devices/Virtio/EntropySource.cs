using System.Buffers.Binary;
using System.Numerics;
using System.Security.Cryptography;
using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>Where virtio-rng's bytes come from.</summary>
public interface IEntropySource
{
    /// <summary>Fills <paramref name="destination"/> with the next bytes of the source.</summary>
    void Fill(Span<byte> destination);
}

/// <summary>The host's cryptographic random number generator: what a guest expects of a hardware RNG.</summary>
public sealed class HostEntropySource : IEntropySource
{
    public void Fill(Span<byte> destination) => RandomNumberGenerator.Fill(destination);
}

/// <summary>
/// A seeded, repeatable stream for the deterministic clock mode, where two runs of the same guest
/// must compute the same thing: xoshiro256** (Blackman and Vigna, "Scrambled linear pseudorandom
/// number generators", 2021), its 256-bit state filled from the seed by SplitMix64 as its authors
/// recommend. Not cryptographic: a guest run with it gets predictable "random" numbers, which is
/// the point of the mode.
/// </summary>
/// <remarks>
/// Each 64-bit output gives 8 bytes, least significant first; a request that is not a multiple of 8
/// uses the low bytes of its last output and discards the rest, so the whole position in the
/// stream is the four state words (<see cref="State"/>).
/// </remarks>
public sealed class SeededEntropySource : IEntropySource
{
    /// <summary>Words of state.</summary>
    public const int StateWords = 4;

    ulong _s0, _s1, _s2, _s3;

    public SeededEntropySource(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix64(ref x);
        _s1 = SplitMix64(ref x);
        _s2 = SplitMix64(ref x);
        _s3 = SplitMix64(ref x); // SplitMix64 is a bijection of its counter: never four zeros
    }

    /// <summary>The generator's position: its four state words.</summary>
    public ulong[] State
    {
        get => [_s0, _s1, _s2, _s3];
        set
        {
            if (CheckState(value) is { } problem)
            {
                ThrowHelper.ArgumentOutOfRange(nameof(value), problem);
            }
            (_s0, _s1, _s2, _s3) = (value[0], value[1], value[2], value[3]);
        }
    }

    /// <summary>Why <paramref name="state"/> cannot be a position of the generator, or null when it can.</summary>
    public static string? CheckState(ulong[]? state)
    {
        if (state is null || state.Length != StateWords)
        {
            return $"the generator state has {state?.Length.ToString() ?? "no"} words, xoshiro256** has {StateWords}";
        }
        // The all-zero state is the one xoshiro256** never leaves (and never reaches from another).
        return state.All(w => w == 0) ? "the generator state is all zero, which xoshiro256** never reaches" : null;
    }

    /// <summary>The next 64-bit output.</summary>
    public ulong Next()
    {
        ulong result = BitOperations.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = BitOperations.RotateLeft(_s3, 45);
        return result;
    }

    public void Fill(Span<byte> destination)
    {
        while (destination.Length >= 8)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination, Next());
            destination = destination[8..];
        }
        if (!destination.IsEmpty)
        {
            Span<byte> last = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(last, Next());
            last[..destination.Length].CopyTo(destination);
        }
    }

    static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9;
        z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB;
        return z ^ (z >> 31);
    }
}
