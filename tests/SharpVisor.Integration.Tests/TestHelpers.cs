using System.Net;
using System.Net.Sockets;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>Small helpers the machine tests share.</summary>
internal static class TestHelpers
{
    /// <summary>
    /// The tier the integration boots run on unless a test names one: the translator (<c>--cpu jit</c>),
    /// the tier a user runs for speed. ConsoleTests' boot to the shell stays on the interpreter, and
    /// TierEquivalenceTests runs one workload on both, so both tiers boot Linux in every run; the
    /// IOMMU and network boots stay on the interpreter too (their comments say why).
    /// SV_TEST_TIER=interp (or jit) overrides it, to compare the tiers' run times.
    /// </summary>
    public static CpuTier Tier { get; } = Environment.GetEnvironmentVariable("SV_TEST_TIER") switch
    {
        null or "" or "jit" => CpuTier.Jit,
        "interp" => CpuTier.Interpreter,
        var other => throw new InvalidOperationException($"SV_TEST_TIER={other}: expected interp or jit"),
    };

    /// <summary>A loopback TCP port nothing listens on right now.</summary>
    public static int FreePort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    /// <summary>The end of a console transcript, for assertion messages.</summary>
    public static string Tail(string s) => s.Length <= 3000 ? s : s[^3000..];
}
