using SharpVisor.Core;

namespace SharpVisor.Devices.Interrupts;

/// <summary>ICR destination shorthand, bits 19:18 (SDM Vol. 3A 11.6.1, figure 11-12).</summary>
public enum IpiShorthand : byte
{
    None = 0,
    Self = 1,
    AllIncludingSelf = 2,
    AllExcludingSelf = 3,
}

/// <summary>
/// The APIC bus as a local APIC's ICR sees it: besides plain messages it needs the destination
/// shorthands, which depend on who sends.
/// </summary>
public interface IApicIpiBus : IApicBus
{
    /// <summary>
    /// Sends an inter-processor interrupt from <paramref name="source"/>. With
    /// <see cref="IpiShorthand.None"/> the message's destination selects the targets, read in the
    /// sender's format (8-bit xAPIC, 32-bit x2APIC).
    /// </summary>
    void DeliverIpi(in ApicInterrupt interrupt, IpiShorthand shorthand, LocalApic source);
}

/// <summary>
/// Receives the EOI a local APIC broadcasts when software ends a level-triggered interrupt
/// (TMR bit set; SDM Vol. 3A 11.8.5). The IOAPIC clears Remote IRR on it.
/// </summary>
public interface IApicEoiListener
{
    void OnEoi(byte vector);
}
