using System.Diagnostics;
using System.Text;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>How to enter a Linux kernel.</summary>
public enum LinuxEntryKind
{
    /// <summary>bzImage: 64-bit entry of the host-decompressed kernel; bare vmlinux: PVH when it has the note.</summary>
    Auto,

    /// <summary>64-bit boot protocol: long mode, RSI = boot_params (Documentation/x86/boot.rst).</summary>
    Long64,

    /// <summary>PVH: 32-bit protected mode, EBX = hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).</summary>
    Pvh,
}

/// <summary>What to boot.</summary>
/// <param name="Kernel">A bzImage or a vmlinux ELF.</param>
/// <param name="Initrd">Initial ramdisk, or null.</param>
/// <param name="CommandLine">Kernel command line.</param>
/// <param name="E820">Memory map (usually <see cref="E820Map.ForMachine"/>).</param>
/// <param name="RsdpAddress">ACPI RSDP address for boot_params.acpi_rsdp_addr / start_info.rsdp_paddr (0 = none).</param>
/// <param name="Entry">Entry protocol.</param>
/// <param name="KernelName">Name used in error messages (the file name).</param>
public sealed record LinuxBootRequest(
    byte[] Kernel,
    byte[]? Initrd,
    string CommandLine,
    E820Map E820,
    ulong RsdpAddress,
    LinuxEntryKind Entry = LinuxEntryKind.Auto,
    string KernelName = "kernel");

/// <summary>Where things went, for logs and tests.</summary>
public sealed record LinuxBootResult(
    BootEntry Entry,
    ulong KernelStart,
    ulong KernelEnd,
    ulong CommandLineAddress,
    ulong InitrdAddress,
    ulong InitrdSize,
    PayloadFormat PayloadFormat,
    TimeSpan DecompressTime,
    ulong? PvhEntry);

/// <summary>
/// Loads a Linux kernel (bzImage or vmlinux), its initrd and command line into guest RAM and
/// describes the machine to it through boot_params or the PVH start_info.
/// </summary>
public static class LinuxLoader
{
    /// <summary>Command-line limit for a bare vmlinux (no cmdline_size to go by).</summary>
    const int DefaultCommandLineMax = 4095;

    public static LinuxBootResult Load(GuestMemory memory, LinuxBootRequest request)
    {
        string name = request.KernelName;
        byte[] setupHeader;
        ElfImage elf;
        ulong reserveStart, reserveEnd;
        ulong initrdMax = 0xFFFF_FFFF;
        int commandLineMax = DefaultCommandLineMax;
        var format = PayloadFormat.Elf;
        var decompressTime = TimeSpan.Zero;

        if (BzImage.LooksLikeBzImage(request.Kernel))
        {
            var bz = BzImage.Parse(request.Kernel, name);
            format = KernelDecompressor.Detect(bz.Payload.Span);
            var timer = Stopwatch.StartNew();
            byte[] vmlinux = KernelDecompressor.Decompress(bz.Payload, name);
            decompressTime = timer.Elapsed;
            elf = ElfImage.Parse(vmlinux, name + " (decompressed payload)");
            if (!elf.Is64Bit)
            {
                throw new UserErrorException($"{name}: the decompressed payload is not a 64-bit ELF");
            }
            setupHeader = bz.SetupHeader.ToArray();
            // The kernel uses init_size bytes from its load address before it sets up its own
            // memory map (boot.rst "init_size"); keep the initrd out of all of it.
            reserveStart = Math.Min(elf.LowestPhysical, bz.PrefAddress);
            reserveEnd = Math.Max(elf.HighestPhysicalEnd, elf.LowestPhysical + bz.InitSize);
            initrdMax = bz.InitrdAddrMax;
            commandLineMax = (int)Math.Min(bz.CmdlineSize, BootLayout.CommandLineEnd - BootLayout.CommandLine - 1);
        }
        else if (ElfImage.LooksLikeElf(request.Kernel))
        {
            elf = ElfImage.Parse(request.Kernel, name);
            setupHeader = ZeroPage.SyntheticSetupHeader();
            reserveStart = elf.LowestPhysical;
            reserveEnd = elf.HighestPhysicalEnd;
        }
        else
        {
            throw new UserErrorException(MultibootLoader.DescribeBadChecksum(request.Kernel, name)
                ?? $"{name}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)");
        }

        LinuxEntryKind kind = request.Entry;
        if (kind == LinuxEntryKind.Auto)
        {
            kind = format == PayloadFormat.Elf && elf.PvhEntry is not null ? LinuxEntryKind.Pvh : LinuxEntryKind.Long64;
        }
        if (kind == LinuxEntryKind.Pvh && elf.PvhEntry is null)
        {
            throw new UserErrorException($"{name}: PVH boot requested but the kernel has no XEN_ELFNOTE_PHYS32_ENTRY note (build with CONFIG_PVH=y)");
        }
        if (kind == LinuxEntryKind.Long64 && !elf.Is64Bit)
        {
            // A 32-bit ELF is usually a Multiboot kernel whose header was not accepted.
            throw new UserErrorException(MultibootLoader.DescribeBadChecksum(request.Kernel, name)
                ?? $"{name}: a 32-bit ELF cannot use the 64-bit entry");
        }
        if (!request.E820.IsUsableRam(reserveStart, reserveEnd - reserveStart))
        {
            throw new UserErrorException($"{name}: the kernel needs RAM at 0x{reserveStart:x}-0x{reserveEnd:x} ({(reserveEnd + (1 << 20) - 1) >> 20} MiB); give the guest more memory");
        }
        elf.Load(memory, name);

        // Command line (boot.rst "cmdline_size": the maximum length, not counting the NUL).
        byte[] commandLine = Encoding.UTF8.GetBytes(request.CommandLine + "\0");
        if (commandLine.Length - 1 > commandLineMax)
        {
            throw new UserErrorException($"kernel command line is {commandLine.Length - 1} bytes; this kernel accepts at most {commandLineMax}");
        }
        BootStructures.Write(memory, BootLayout.CommandLine, commandLine);

        ulong initrdAddress = 0, initrdSize = 0;
        if (request.Initrd is { Length: > 0 } initrd)
        {
            initrdSize = (ulong)initrd.Length;
            initrdAddress = PlaceInitrd(request.E820, initrdSize, initrdMax, reserveStart, reserveEnd);
            BootStructures.Write(memory, initrdAddress, initrd);
        }

        BootStructures.WriteGdt(memory);
        BootEntry entry;
        if (kind == LinuxEntryKind.Pvh)
        {
            var (info, tables) = PvhStartInfo.Build(BootLayout.StartInfoTables, BootLayout.CommandLine, initrdAddress, initrdSize, request.RsdpAddress, request.E820);
            if (tables.Length > (int)(BootLayout.ZeroPage - BootLayout.StartInfoTables))
            {
                throw new UserErrorException($"{request.E820.Entries.Count} memory map entries do not fit the PVH start_info area");
            }
            BootStructures.Write(memory, BootLayout.StartInfo, info);
            BootStructures.Write(memory, BootLayout.StartInfoTables, tables);
            entry = BootStructures.Protected32Entry((uint)elf.PvhEntry!.Value, eax: 0, ebx: (uint)BootLayout.StartInfo);
        }
        else
        {
            // The decompressor (arch/x86/boot/compressed/head_64.S) ends with RSI = boot_params and a
            // jump to the kernel's startup_64 at its physical load address, in long mode with an
            // identity map. vmlinux's e_entry is phys_startup_64 (arch/x86/kernel/vmlinux.lds.S);
            // ToPhysical also copes with a virtual e_entry.
            ulong rip = elf.ToPhysical(elf.Entry)
                ?? throw new UserErrorException($"{name}: ELF entry 0x{elf.Entry:x} is not inside any loadable segment");
            byte[] zeroPage = ZeroPage.Build(setupHeader, BootLayout.CommandLine, initrdAddress, initrdSize, request.RsdpAddress, request.E820);
            BootStructures.Write(memory, BootLayout.ZeroPage, zeroPage);
            BootStructures.WriteIdentityPageTables(memory);
            entry = BootStructures.LongModeEntry(rip, BootLayout.ZeroPage);
        }
        return new LinuxBootResult(entry, reserveStart, reserveEnd, BootLayout.CommandLine, initrdAddress, initrdSize, format, decompressTime, elf.PvhEntry);
    }

    /// <summary>
    /// Highest page-aligned spot in E820 RAM below min(initrd_addr_max + 1, 4 GiB) that does not
    /// overlap the kernel's reserved range or the first MiB (boot.rst "initrd_addr_max").
    /// </summary>
    internal static ulong PlaceInitrd(E820Map e820, ulong size, ulong initrdAddrMax, ulong kernelStart, ulong kernelEnd)
    {
        ulong limit = Math.Min(initrdAddrMax + 1, GuestMemory.FourGiB);
        foreach (var e in e820.Entries.Where(e => e.Type == E820Type.Ram).OrderByDescending(e => e.Address))
        {
            // Free pieces of this entry: below and above the kernel.
            (ulong Start, ulong End)[] pieces = [(Math.Max(e.Address, kernelEnd), e.End), (e.Address, Math.Min(e.End, kernelStart))];
            foreach (var (start, end0) in pieces)
            {
                ulong lo = Math.Max(start, BootLayout.OneMiB);
                ulong end = Math.Min(end0, limit);
                if (end <= lo || end - lo < size)
                {
                    continue;
                }
                ulong address = BootLayout.AlignDown(end - size, GuestMemory.PageSize);
                if (address >= lo)
                {
                    return address;
                }
            }
        }
        throw new UserErrorException($"initrd of {size >> 20} MiB does not fit in guest RAM below 0x{limit:x} next to the kernel; give the guest more memory");
    }

    /// <summary>
    /// Reads a kernel/initrd file of at most <paramref name="maxBytes"/>, turning I/O problems into a
    /// one-line user error. Only as many bytes as the file's size when opened are read, so a file
    /// that grows (or a device that never ends) cannot make it read without bound;
    /// <see cref="MachineConfig.Validate"/> has already refused anything but regular files.
    /// </summary>
    public static byte[] ReadFile(string path, string what, long maxBytes = MachineConfig.MaxBootFileBytes)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
            long length = file.Length;
            if (length > maxBytes)
            {
                throw new UserErrorException($"{what} '{path}' is {length} bytes, more than the limit of {maxBytes >> 20} MiB");
            }
            var data = new byte[length];
            file.ReadExactly(data);
            return data;
        }
        catch (EndOfStreamException)
        {
            throw new UserErrorException($"cannot read {what} '{path}': the file shrank while it was being read");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UserErrorException($"cannot read {what} '{path}': {e.Message}");
        }
    }
}
