using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

public class GuestMemoryTests
{
    [Fact]
    public void LargeGuestsSplitRamAroundThePciHole()
    {
        using var ram = new GuestMemory(3UL << 30);
        Assert.Equal(GuestMemory.LowRamWhenSplit, ram.LowRamEnd);
        Assert.Equal(1UL << 30, ram.HighRamSize);
        Assert.True(ram.IsRam(0x7FFF_FFFF));
        Assert.False(ram.IsRam(0x8000_0000));
        Assert.True(ram.IsRam(GuestMemory.FourGiB));
        Assert.False(ram.IsRam(GuestMemory.FourGiB + (1UL << 30)));
    }

    [Fact]
    public void AccessesStraddlingTheEndOfRamAreRefusedWhole()
    {
        using var ram = new GuestMemory(1 << 20);
        Span<byte> buf = stackalloc byte[8];
        Assert.False(ram.TryRead((1 << 20) - 4, buf));
        Assert.False(ram.TryWrite((1 << 20) - 4, buf));
        Assert.True(ram.TryWrite((1 << 20) - 8, [1, 2, 3, 4, 5, 6, 7, 8]));
        Assert.Equal(0x0807060504030201UL, ram.ReadU64((1 << 20) - 8));
    }

    [Fact]
    public void WritingACodePageBumpsItsGenerationOnce()
    {
        using var ram = new GuestMemory(1 << 20);
        uint gen = ram.MarkCode(0x3000);
        Assert.True(ram.TryWrite(0x3ff0, new byte[32])); // touches pages 3 and 4
        Assert.NotEqual(gen, ram.Generation(0x3000));
        uint after = ram.Generation(0x3000);
        Assert.True(ram.TryWrite(0x3000, new byte[1])); // no longer marked: no bump
        Assert.Equal(after, ram.Generation(0x3000));
        Assert.Equal(0u, ram.Generation(0x4000));
    }
}
