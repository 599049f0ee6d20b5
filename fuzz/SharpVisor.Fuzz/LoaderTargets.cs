using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;

namespace SharpVisor.Fuzz;

/// <summary>
/// A guest as the CLI builds it before loading, with the firmware's ACPI tables and E820 map: the
/// largest RAM that still lies wholly below 4 GiB (2.75 GiB), so that every 32-bit address a kernel
/// file can name may be RAM. The mapping is reserved, not committed: only what a loader writes costs memory.
/// </summary>
sealed class FuzzGuest : IDisposable
{
    public FuzzGuest()
    {
        Memory = new GuestMemory(GuestMemory.MaxLowRam);
        Firmware = PcFirmware.Install(Memory, AcpiMachineDescription.ForMachine(Memory, cpuCount: 1));
    }

    public GuestMemory Memory { get; }
    public PcFirmware Firmware { get; }

    /// <summary>A small initrd / Multiboot module: its bytes are copied, never parsed; only its placement matters.</summary>
    public static readonly byte[] Initrd = [.. Enumerable.Range(0, 4096).Select(i => (byte)i)];

    public void Dispose() => Memory.Dispose();
}

/// <summary>Every path a --kernel file can take (the dispatch in Board.LoadGuest).</summary>
sealed class KernelTarget : FuzzTarget
{
    readonly FuzzGuest _guest = new();

    public override FuzzOutcome Run(byte[] input)
    {
        try
        {
            if (!BzImage.LooksLikeBzImage(input) && MultibootLoader.FindHeader(input) is not null)
            {
                MultibootLoader.Load(_guest.Memory, input, "console=ttyS0", [new MultibootModule(FuzzGuest.Initrd, "initrd")], _guest.Firmware.E820, log: FuzzTarget.Quiet);
            }
            else
            {
                LinuxLoader.Load(_guest.Memory, new LinuxBootRequest(input, FuzzGuest.Initrd, "console=ttyS0", _guest.Firmware.E820, _guest.Firmware.Acpi.RsdpAddress));
            }
            return FuzzOutcome.Ok;
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
    }

    public override void Dispose() => _guest.Dispose();
}

/// <summary>The bzImage parse chain without guest memory: setup header, payload, decompressed ELF.</summary>
sealed class BzImageTarget : FuzzTarget
{
    public override FuzzOutcome Run(byte[] input)
    {
        try
        {
            var bz = BzImage.Parse(input);
            _ = bz.SetupHeader.Length;
            byte[] vmlinux = KernelDecompressor.Decompress(bz.Payload);
            ElfImage.Parse(vmlinux, "kernel (decompressed payload)");
            return FuzzOutcome.Ok;
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
    }
}

/// <summary>The payload decompressors alone (the input is what payload_offset/payload_length select).</summary>
sealed class PayloadTarget : FuzzTarget
{
    public override FuzzOutcome Run(byte[] input)
    {
        try
        {
            byte[] vmlinux = KernelDecompressor.Decompress(input);
            ElfImage.Parse(vmlinux, "kernel (decompressed payload)");
            return FuzzOutcome.Ok;
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
    }
}

/// <summary>An ELF kernel: parse, translate the entry point, load every PT_LOAD segment into guest RAM.</summary>
sealed class ElfTarget : FuzzTarget
{
    readonly FuzzGuest _guest = new();

    public override FuzzOutcome Run(byte[] input)
    {
        try
        {
            var elf = ElfImage.Parse(input);
            _ = elf.ToPhysical(elf.Entry);
            _ = elf.LowestPhysical;
            _ = elf.HighestPhysicalEnd;
            elf.Load(_guest.Memory);
            return FuzzOutcome.Ok;
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
    }

    public override void Dispose() => _guest.Dispose();
}

/// <summary>A Multiboot v1 kernel with one module.</summary>
sealed class MultibootTarget : FuzzTarget
{
    readonly FuzzGuest _guest = new();

    public override FuzzOutcome Run(byte[] input)
    {
        try
        {
            MultibootLoader.Load(_guest.Memory, input, "console=ttyS0", [new MultibootModule(FuzzGuest.Initrd, "initrd")], _guest.Firmware.E820, log: FuzzTarget.Quiet);
            return FuzzOutcome.Ok;
        }
        catch (UserErrorException e)
        {
            return Rejected(e);
        }
    }

    public override void Dispose() => _guest.Dispose();
}
