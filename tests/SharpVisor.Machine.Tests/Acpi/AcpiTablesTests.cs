using System.Buffers.Binary;
using System.Text;
using SharpVisor.Machine.Acpi;

namespace SharpVisor.Machine.Tests.Acpi;

public sealed class AcpiTablesTests
{
    /// <summary>A minimal DMAR-shaped table (header + host address width + flags + reserved).</summary>
    internal static byte[] FakeDmar()
    {
        var t = new byte[48];
        Encoding.ASCII.GetBytes("DMAR", t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), 48);
        t[8] = 1;
        Encoding.ASCII.GetBytes("SHRPVSSHARPVSR", t.AsSpan(10));
        t[36] = 38; // host address width - 1
        return t;
    }
}
