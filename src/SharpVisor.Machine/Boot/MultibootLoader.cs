using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>A Multiboot module: its bytes and the string the kernel sees for it.</summary>
public sealed record MultibootModule(byte[] Data, string CommandLine);

/// <summary>The Multiboot v1 header found in a kernel image (Multiboot Specification 0.6.96, 3.1).</summary>
public sealed record MultibootHeader(int FileOffset, uint Flags, uint HeaderAddr, uint LoadAddr, uint LoadEndAddr, uint BssEndAddr, uint EntryAddr)
{
    public bool PageAlignModules => (Flags & MultibootLoader.FlagPageAlign) != 0;
    public bool HasAddressFields => (Flags & MultibootLoader.FlagAoutKludge) != 0;
}

/// <summary>Where things went.</summary>
public sealed record MultibootResult(BootEntry Entry, ulong ImageStart, ulong ImageEnd, ulong InfoAddress, IReadOnlyList<(ulong Start, ulong End)> Modules);

/// <summary>
/// Loads a Multiboot v1 kernel (Multiboot Specification 0.6.96): finds the header in the first
/// 8 KiB, loads the image through the a.out kludge address fields or as an ELF32, places the
/// modules and builds the multiboot_info structure. The kernel is entered in flat 32-bit protected
/// mode with paging off, EAX = 0x2BADB002 and EBX = the multiboot_info address (spec 3.2).
/// </summary>
public static class MultibootLoader
{
    public const uint HeaderMagic = 0x1BADB002;
    public const uint BootloaderMagic = 0x2BADB002;
    public const int SearchLength = 8192;
    public const uint FlagPageAlign = 1 << 0;
    public const uint FlagMemoryInfo = 1 << 1;
    public const uint FlagVideoMode = 1 << 2;
    public const uint FlagAoutKludge = 1 << 16;
    const uint SupportedRequirements = FlagPageAlign | FlagMemoryInfo | FlagVideoMode;

    // multiboot_info.flags bits (spec 3.3).
    const uint InfoMemory = 1 << 0;
    const uint InfoCmdline = 1 << 2;
    const uint InfoMods = 1 << 3;
    const uint InfoMmap = 1 << 6;
    const uint InfoLoaderName = 1 << 9;
    const int InfoSize = 88;
    const string LoaderName = "SharpVisor";

    /// <summary>Finds and checks the Multiboot header; null when there is none (not a Multiboot kernel).</summary>
    public static MultibootHeader? FindHeader(ReadOnlySpan<byte> image, string name = "kernel")
    {
        int limit = Math.Min(image.Length, SearchLength) - 12;
        for (int offset = 0; offset <= limit; offset += 4) // the header is 32-bit aligned (spec 3.1.1)
        {
            uint magic = BinaryPrimitives.ReadUInt32LittleEndian(image[offset..]);
            if (magic != HeaderMagic)
            {
                continue;
            }
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(image[(offset + 4)..]);
            uint checksum = BinaryPrimitives.ReadUInt32LittleEndian(image[(offset + 8)..]);
            if (unchecked(magic + flags + checksum) != 0)
            {
                continue; // the magic value inside code or data, not a header
            }
            uint unsupported = flags & 0xFFFF & ~SupportedRequirements;
            if (unsupported != 0)
            {
                // Spec 3.1.2: a loader that cannot honour a bit in 0-15 must refuse the kernel.
                throw new UserErrorException($"{name}: Multiboot header requires features 0x{unsupported:x} (flags 0x{flags:x}) that SharpVisor does not provide");
            }
            if ((flags & FlagAoutKludge) == 0)
            {
                return new MultibootHeader(offset, flags, 0, 0, 0, 0, 0);
            }
            if (offset + 32 > image.Length)
            {
                throw new UserErrorException($"{name}: truncated Multiboot header at 0x{offset:x}");
            }
            var a = image.Slice(offset + 12, 20);
            return new MultibootHeader(offset, flags,
                HeaderAddr: BinaryPrimitives.ReadUInt32LittleEndian(a),
                LoadAddr: BinaryPrimitives.ReadUInt32LittleEndian(a[4..]),
                LoadEndAddr: BinaryPrimitives.ReadUInt32LittleEndian(a[8..]),
                BssEndAddr: BinaryPrimitives.ReadUInt32LittleEndian(a[12..]),
                EntryAddr: BinaryPrimitives.ReadUInt32LittleEndian(a[16..]));
        }
        return null;
    }

    /// <summary>
    /// The error for an image whose first Multiboot magic in the first 8 KiB has a checksum that
    /// does not make magic + flags + checksum zero (spec 3.1.2), or null when there is no such magic.
    /// A loader that finds no valid header reports this rather than "not a kernel", so the user
    /// learns what is wrong with the image.
    /// </summary>
    public static string? DescribeBadChecksum(ReadOnlySpan<byte> image, string name = "kernel")
    {
        int limit = Math.Min(image.Length, SearchLength) - 12;
        for (int offset = 0; offset <= limit; offset += 4)
        {
            uint magic = BinaryPrimitives.ReadUInt32LittleEndian(image[offset..]);
            if (magic == HeaderMagic)
            {
                uint flags = BinaryPrimitives.ReadUInt32LittleEndian(image[(offset + 4)..]);
                uint checksum = BinaryPrimitives.ReadUInt32LittleEndian(image[(offset + 8)..]);
                uint sum = unchecked(magic + flags + checksum);
                if (sum != 0)
                {
                    return $"{name}: Multiboot header at 0x{offset:x} has a bad checksum: magic 0x{magic:x} + flags 0x{flags:x} + checksum 0x{checksum:x} is 0x{sum:x}, not 0";
                }
            }
        }
        return null;
    }

    public static MultibootResult Load(GuestMemory memory, byte[] image, string commandLine, IReadOnlyList<MultibootModule> modules, E820Map e820, string name = "kernel", Log? log = null)
    {
        var header = FindHeader(image, name)
            ?? throw new UserErrorException(DescribeBadChecksum(image, name)
                ?? $"{name}: no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB");
        if ((header.Flags & FlagVideoMode) != 0)
        {
            (log ?? new Log()).Warn("multiboot", $"{name} asks for a video mode; there is no framebuffer, so the multiboot_info carries no video information");
        }

        ulong imageStart, imageEnd;
        uint entry;
        if (header.HasAddressFields)
        {
            (imageStart, imageEnd, entry) = LoadAout(memory, image, header, e820, name);
        }
        else if (ElfImage.LooksLikeElf(image))
        {
            var elf = ElfImage.Parse(image, name);
            if (elf.Is64Bit)
            {
                throw new UserErrorException($"{name}: Multiboot kernels without the a.out kludge must be ELF32, not ELF64");
            }
            imageStart = elf.LowestPhysical;
            imageEnd = elf.HighestPhysicalEnd;
            CheckRam(e820, imageStart, imageEnd, name);
            elf.Load(memory, name);
            entry = (uint)(elf.ToPhysical(elf.Entry) ?? throw new UserErrorException($"{name}: ELF entry 0x{elf.Entry:x} is outside the loaded segments"));
        }
        else
        {
            throw new UserErrorException($"{name}: Multiboot header without address fields (flag 16) and the file is not ELF");
        }

        // Strings (command lines, loader name) go in the low string area; modules after the image.
        var strings = new StringArea(memory, BootLayout.CommandLine, BootLayout.CommandLineEnd);
        uint cmdline = strings.Add(commandLine);
        uint loaderName = strings.Add(LoaderName);

        var placed = new List<(ulong Start, ulong End)>();
        var moduleTable = new byte[modules.Count * 16];
        ulong next = BootLayout.AlignUp(imageEnd, GuestMemory.PageSize);
        for (int i = 0; i < modules.Count; i++)
        {
            ulong alignment = header.PageAlignModules ? GuestMemory.PageSize : 16;
            ulong start = BootLayout.AlignUp(next, alignment);
            ulong end = start + (ulong)modules[i].Data.Length;
            if (end > GuestMemory.FourGiB || !e820.IsUsableRam(start, Math.Max(1, end - start)))
            {
                throw new UserErrorException($"{name}: Multiboot module {i} ({modules[i].Data.Length} bytes) does not fit in guest RAM after the kernel; give the guest more memory");
            }
            BootStructures.Write(memory, start, modules[i].Data);
            placed.Add((start, end));
            // multiboot_module: mod_start, mod_end, string, reserved (spec 3.3 "mods").
            var m = moduleTable.AsSpan(i * 16, 16);
            BinaryPrimitives.WriteUInt32LittleEndian(m, (uint)start);
            BinaryPrimitives.WriteUInt32LittleEndian(m[4..], (uint)end);
            BinaryPrimitives.WriteUInt32LittleEndian(m[8..], strings.Add(modules[i].CommandLine));
            next = end;
        }

        // mmap entries: size (20, not counting itself), base_addr, length, type (spec 3.3 "mmap").
        var mmap = new byte[e820.Entries.Count * 24];
        for (int i = 0; i < e820.Entries.Count; i++)
        {
            var m = mmap.AsSpan(i * 24, 24);
            var e = e820.Entries[i];
            BinaryPrimitives.WriteUInt32LittleEndian(m, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(m[4..], e.Address);
            BinaryPrimitives.WriteUInt64LittleEndian(m[12..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(m[20..], (uint)e.Type);
        }
        ulong mmapAddress = BootLayout.StartInfoTables;
        ulong modsAddress = mmapAddress + (ulong)mmap.Length;
        if (modsAddress + (ulong)moduleTable.Length > BootLayout.ZeroPage)
        {
            throw new UserErrorException($"{name}: too many Multiboot modules or memory map entries for the information area");
        }
        BootStructures.Write(memory, mmapAddress, mmap);
        BootStructures.Write(memory, modsAddress, moduleTable);

        var info = new byte[InfoSize];
        var s = info.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, InfoMemory | InfoCmdline | InfoMods | InfoMmap | InfoLoaderName);
        // mem_lower: KiB of conventional memory from 0; mem_upper: KiB of contiguous RAM from 1 MiB.
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], (uint)(ContiguousRamFrom(e820, 0) / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], (uint)Math.Min(ContiguousRamFrom(e820, BootLayout.OneMiB) / 1024, uint.MaxValue));
        BinaryPrimitives.WriteUInt32LittleEndian(s[16..], cmdline);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], (uint)modules.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(s[24..], (uint)modsAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[44..], (uint)mmap.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(s[48..], (uint)mmapAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[64..], loaderName);
        BootStructures.Write(memory, BootLayout.StartInfo, info);

        BootStructures.WriteGdt(memory);
        var bootEntry = BootStructures.Protected32Entry(entry, BootloaderMagic, (uint)BootLayout.StartInfo);
        return new MultibootResult(bootEntry, imageStart, imageEnd, BootLayout.StartInfo, placed);
    }

    // a.out kludge (spec 3.1.3): the file from header_offset - (header_addr - load_addr) goes to
    // load_addr, up to load_end_addr (0 = end of file); bss up to bss_end_addr (0 = none) is zeroed.
    static (ulong Start, ulong End, uint Entry) LoadAout(GuestMemory memory, byte[] image, MultibootHeader h, E820Map e820, string name)
    {
        if (h.HeaderAddr < h.LoadAddr)
        {
            throw new UserErrorException($"{name}: Multiboot header_addr 0x{h.HeaderAddr:x} is below load_addr 0x{h.LoadAddr:x}");
        }
        long fileStart = h.FileOffset - (long)(h.HeaderAddr - h.LoadAddr);
        if (fileStart < 0)
        {
            throw new UserErrorException($"{name}: Multiboot load_addr 0x{h.LoadAddr:x} lies before the start of the file");
        }
        long loadLength = h.LoadEndAddr == 0 ? image.Length - fileStart : (long)h.LoadEndAddr - h.LoadAddr;
        if (loadLength <= 0 || fileStart + loadLength > image.Length)
        {
            throw new UserErrorException($"{name}: Multiboot load range 0x{h.LoadAddr:x}-0x{h.LoadEndAddr:x} is empty or extends past the end of the {image.Length}-byte file");
        }
        ulong loadEnd = h.LoadAddr + (ulong)loadLength;
        ulong end = h.BssEndAddr == 0 ? loadEnd : h.BssEndAddr;
        if (end < loadEnd)
        {
            throw new UserErrorException($"{name}: Multiboot bss_end_addr 0x{h.BssEndAddr:x} is below the end of the loaded image 0x{loadEnd:x}");
        }
        if (h.EntryAddr < h.LoadAddr || h.EntryAddr >= end)
        {
            throw new UserErrorException($"{name}: Multiboot entry_addr 0x{h.EntryAddr:x} is outside the loaded image 0x{h.LoadAddr:x}-0x{end:x}");
        }
        CheckRam(e820, h.LoadAddr, end, name);
        BootStructures.Write(memory, h.LoadAddr, image.AsSpan((int)fileStart, (int)loadLength));
        // The bss may be nearly all of a 32-bit address space: zero it a chunk at a time, never as one
        // array (a bss over 2 GiB threw OverflowException; found by fuzzing, fuzz/corpus/multiboot).
        var zeros = new byte[Math.Min(end - loadEnd, 1UL << 20)];
        for (ulong at = loadEnd; at < end;)
        {
            int n = (int)Math.Min(end - at, (ulong)zeros.Length);
            BootStructures.Write(memory, at, zeros.AsSpan(0, n));
            at += (ulong)n;
        }
        return (h.LoadAddr, end, h.EntryAddr);
    }

    static void CheckRam(E820Map e820, ulong start, ulong end, string name)
    {
        if (start < BootLayout.OneMiB || end > GuestMemory.FourGiB || !e820.IsUsableRam(start, end - start))
        {
            throw new UserErrorException($"{name}: the kernel image 0x{start:x}-0x{end:x} is not in usable guest RAM above 1 MiB");
        }
    }

    static ulong ContiguousRamFrom(E820Map e820, ulong address)
    {
        foreach (var e in e820.Entries)
        {
            if (e.Type == E820Type.Ram && address >= e.Address && address < e.End)
            {
                return e.End - address;
            }
        }
        return 0;
    }

    /// <summary>NUL-terminated strings packed into a low-memory area.</summary>
    sealed class StringArea(GuestMemory memory, ulong start, ulong end)
    {
        ulong _next = start;

        public uint Add(string text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text + "\0");
            if (_next + (ulong)bytes.Length > end)
            {
                throw new UserErrorException($"Multiboot command lines total more than {end - BootLayout.CommandLine} bytes");
            }
            ulong at = _next;
            BootStructures.Write(memory, at, bytes);
            _next += (ulong)bytes.Length;
            return (uint)at;
        }
    }
}
