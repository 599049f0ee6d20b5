namespace SharpVisor.Machine;

/// <summary>The q35-like board: which devices sit where (filled in as the device models land).</summary>
public sealed partial class VirtualMachine
{
    void BuildBoard()
    {
    }

    void LoadGuest()
    {
        throw new SharpVisor.Core.UserErrorException("booting a kernel is not possible yet: the kernel loaders are being integrated (see README: status)");
    }
}

public sealed partial class VirtualMachine
{
    /// <summary>A byte typed on the console, for the guest's serial port.</summary>
    public void SendConsoleInput(byte b)
    {
        _ = b; // wired to COM1 when the UART lands
    }
}
