using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// QEMU's isa-debug-exit device (conventionally at port 0xF4): a guest write of value v asks the
/// VMM to exit with status (v &lt;&lt; 1) | 1, so a test guest can report pass/fail without a
/// shutdown path. Reads return 0xFF... like an empty ISA port. The status is always odd, so it
/// can never be confused with a clean 0 exit.
/// </summary>
public sealed class DebugExit(Action<int> exit) : IPortDevice
{
    readonly Action<int> _exit = exit;

    public string Name => "isa-debug-exit";

    public readonly Counter Reads = new("debug_exit.reads");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [Reads];

    public uint PortRead(ushort offset, int size)
    {
        Reads.Increment();
        return size switch { 1 => 0xFF, 2 => 0xFFFF, _ => 0xFFFF_FFFF };
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        // Only the bytes of the access count (QEMU's iosize property picks 1, 2 or 4).
        uint v = size switch { 1 => value & 0xFF, 2 => value & 0xFFFF, _ => value };
        _exit((int)((v << 1) | 1));
    }
}
