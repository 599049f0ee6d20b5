using System.Text.Json;
using SharpVisor.Core;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>
/// virtio-rng with the deterministic clock (issue 9): a seeded generator, so two runs hand the guest
/// the same bytes; its position is part of the device's saved state, so a restored device goes on
/// with the bytes the original would have given; a bad position is refused and changes nothing.
/// </summary>
public class VirtioEntropyStateTests
{
    /// <summary>Request sizes a driver might post: odd ones leave part of an output unused.</summary>
    static readonly uint[] Requests = [64, 5, 13, 4096, 1, 32, 7];

    static string Json<T>(T value) => JsonSerializer.Serialize(value);

    /// <summary>Posts one buffer per size, each request on its own, and returns what the device wrote into them.</summary>
    static byte[] Draw(VirtioTestDriver d, IEnumerable<uint> sizes)
    {
        var q = d.Queues[0];
        var all = new List<byte>();
        foreach (uint size in sizes)
        {
            ulong buffer = d.Allocate(size);
            ushort head = q.Post((buffer, size, true));
            q.Notify();
            Assert.Equal((head, size), q.TakeUsed());
            all.AddRange(d.ReadRam(buffer, (int)size));
        }
        return [.. all];
    }

    static VirtioTestDriver Started(ulong seed)
    {
        var d = new VirtioTestDriver(new VirtioEntropy(new SeededEntropySource(seed)));
        d.Start();
        return d;
    }

    /// <summary>xoshiro256**'s reference outputs from the state {1, 2, 3, 4}, and SplitMix64's first output from seed 0.</summary>
    [Fact]
    public void The_generator_is_xoshiro256starstar_seeded_by_splitmix64()
    {
        var g = new SeededEntropySource(0) { State = [1, 2, 3, 4] };
        Assert.Equal([11520UL, 0UL, 1509978240UL, 1215971899390074240UL], new[] { g.Next(), g.Next(), g.Next(), g.Next() });
        Assert.Equal(0xE220_A839_7B1D_CDAFUL, new SeededEntropySource(0).State[0]);
    }

    [Fact]
    public void Two_runs_with_the_same_seed_hand_the_guest_the_same_bytes()
    {
        using var a = Started(MachineSeed);
        using var b = Started(MachineSeed);
        using var other = Started(MachineSeed + 1);
        byte[] first = Draw(a, Requests);
        Assert.Equal(first, Draw(b, Requests));
        Assert.NotEqual(first, Draw(other, Requests));
        Assert.True(first.Count(x => x == 0) < first.Length / 64, "the bytes do not look random");
    }

    const ulong MachineSeed = 0x5EED;

    [Fact]
    public void A_device_restored_mid_stream_goes_on_with_the_same_bytes()
    {
        using var original = Started(MachineSeed);
        Draw(original, Requests);
        var state = original.Transport.SaveState();
        Assert.Equal(SeededEntropySource.StateWords, state.Device.Entropy!.Generator!.Length);
        // A fresh device with another seed: only the saved position can make it agree.
        using var restored = original.RestoredCopy(new VirtioEntropy(new SeededEntropySource(12345)), state);
        Assert.Equal(Json(state), Json(restored.Transport.SaveState()));
        Assert.Equal(Draw(original, Requests), Draw(restored, Requests));
    }

    [Fact]
    public void Host_randomness_saves_no_position_and_round_trips()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var state = d.Transport.SaveState();
        Assert.NotNull(state.Device.Entropy);
        Assert.Null(state.Device.Entropy.Generator);
        using var restored = d.RestoredCopy(new VirtioEntropy(new HostEntropySource()), state);
        Assert.Equal(Json(state), Json(restored.Transport.SaveState()));
        // And the other way round: a seeded device does not take a host-randomness state.
        using var seeded = Started(MachineSeed);
        Assert.Contains("host randomness", Assert.Throws<InvalidStateException>(() => seeded.Transport.RestoreState(state)).Message);
    }

    public static TheoryData<string> BadStates() =>
        ["missing entropy", "entropy version", "missing generator", "short generator", "long generator", "all-zero generator", "console state on the rng"];

    [Theory]
    [MemberData(nameof(BadStates))]
    public void A_bad_position_is_refused_and_changes_nothing(string field)
    {
        using var d = Started(MachineSeed);
        using var twin = Started(MachineSeed);
        Draw(d, [40]);
        Draw(twin, [40]);
        var good = d.Transport.SaveState();
        var device = good.Device;
        var entropy = device.Entropy!;
        var bad = good with
        {
            Device = field switch
            {
                "missing entropy" => device with { Entropy = null },
                "entropy version" => device with { Entropy = entropy with { Version = 2 } },
                "missing generator" => device with { Entropy = entropy with { Generator = null } },
                "short generator" => device with { Entropy = entropy with { Generator = entropy.Generator![..3] } },
                "long generator" => device with { Entropy = entropy with { Generator = [.. entropy.Generator!, 1] } },
                "all-zero generator" => device with { Entropy = entropy with { Generator = new ulong[SeededEntropySource.StateWords] } },
                "console state on the rng" => device with { Console = new VirtioConsoleState { PendingInput = [] } },
                _ => throw new ArgumentException(field),
            },
        };
        var e = Assert.Throws<InvalidStateException>(() => d.Transport.RestoreState(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(Json(good), Json(d.Transport.SaveState()));
        // Still where it was in the stream: it gives what its untouched twin gives.
        Assert.Equal(Draw(twin, Requests), Draw(d, Requests));
    }

    [Fact]
    public void Other_devices_refuse_an_entropy_state()
    {
        using var d = new VirtioTestDriver(new VirtioConsole());
        d.Start();
        var good = d.Transport.SaveState();
        var bad = good with { Device = good.Device with { Entropy = new VirtioEntropyState() } };
        Assert.Throws<InvalidStateException>(() => d.Transport.RestoreState(bad));
        Assert.Equal(Json(good), Json(d.Transport.SaveState()));
    }
}
