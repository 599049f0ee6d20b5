namespace SharpVisor.Devices.Pci;

/// <summary>
/// A PCI function's guest-visible state: its configuration space as programmed (BARs,
/// command/status, capability registers with MSI/MSI-X control and ATS control), the MSI-X table
/// and Pending Bit Array, and the INTx condition. What the bus maps and the ATS port follow from it.
/// </summary>
public sealed record PciFunctionState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    /// <summary>All 4096 bytes of configuration space (a conventional function's extended part reads all ones to the guest but is stored as is).</summary>
    public required byte[] Config { get; init; }
    /// <summary>MSI-X table, 16 bytes per vector (empty without MSI-X).</summary>
    public required byte[] MsixTable { get; init; }
    /// <summary>MSI-X Pending Bit Array, one bit per vector in qwords (empty without MSI-X).</summary>
    public required byte[] MsixPba { get; init; }
    /// <summary>The function asks for INTx (PCI 3.0, 2.2.6); whether the line is driven also depends on the command register and MSI/MSI-X.</summary>
    public bool IntxAsserted { get; init; }
}
