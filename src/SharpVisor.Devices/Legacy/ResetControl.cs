using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// ICH9 Reset Control register RST_CNT at I/O port 0xCF9 (ICH9 datasheet 13.7.5). Setting bit 2
/// (RST_CPU) resets the system; bit 1 (SYS_RST) selects a hard rather than a soft reset and
/// bit 3 (FULL_RST) a power cycle; this VMM performs the same full reset for all of them.
/// The FADT RESET_REG should describe this register (System I/O, address 0xCF9, 8 bits) with
/// RESET_VALUE 0x06, which is what Linux's ACPI reboot writes; Linux's reboot=pci path writes
/// 0x02 then 0x06 (arch/x86/kernel/reboot.c).
/// <para>0xCF9 lies inside the dword of the PCI CONFIG_ADDRESS register (0xCF8-0xCFB): the PCI
/// host bridge must forward BYTE accesses to 0xCF9 here and keep dword accesses for itself.</para>
/// </summary>
public sealed class ResetControl(Action reset) : IPortDevice
{
    const byte SysRst = 1 << 1;
    const byte RstCpu = 1 << 2;
    const byte FullRst = 1 << 3;

    readonly Lock _lock = new();
    readonly Action _reset = reset;
    byte _value;

    public string Name => "reset-control";

    public readonly Counter Resets = new("reset_control.resets");
    public readonly Counter WideAccesses = new("reset_control.wide_accesses");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [Resets, WideAccesses];

    /// <summary>Power-on value 0.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _value = 0;
        }
    }

    public uint PortRead(ushort offset, int size)
    {
        if (size != 1)
        {
            WideAccesses.Increment();
        }
        lock (_lock)
        {
            return _value;
        }
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        if (size != 1)
        {
            WideAccesses.Increment();
        }
        bool reset;
        lock (_lock)
        {
            // RST_CPU is self-clearing; SYS_RST and FULL_RST are kept (they are read back by Linux
            // before it writes the reset value).
            _value = (byte)(value & (SysRst | FullRst));
            reset = (value & RstCpu) != 0;
            if (reset)
            {
                _value = 0;
            }
        }
        if (reset)
        {
            Resets.Increment();
            _reset();
        }
    }
}
