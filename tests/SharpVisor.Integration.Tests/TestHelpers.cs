using System.Net;
using System.Net.Sockets;

namespace SharpVisor.Integration.Tests;

/// <summary>Small helpers the machine tests share.</summary>
internal static class TestHelpers
{
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
