using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>One PT_LOAD segment (System V gABI, "Program Header").</summary>
public readonly record struct ElfSegment(ulong FileOffset, ulong VirtualAddress, ulong PhysicalAddress, ulong FileSize, ulong MemorySize);

/// <summary>
/// An ELF32 or ELF64 x86 executable: what a loader needs to place it in guest-physical memory
/// (PT_LOAD segments at their p_paddr) and the Xen/PVH ELF notes.
/// </summary>
public sealed class ElfImage
{
    const uint PtLoad = 1;
    const uint PtNote = 4;
    const ushort EtExec = 2;
    const ushort EmI386 = 3;
    const ushort EmX8664 = 62;
    /// <summary>XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h): the PVH 32-bit entry point.</summary>
    public const uint XenElfNotePhys32Entry = 18;

    readonly byte[] _file;

    ElfImage(byte[] file, bool is64, ulong entry, List<ElfSegment> segments, ulong? pvhEntry)
    {
        _file = file;
        Is64Bit = is64;
        Entry = entry;
        Segments = segments;
        PvhEntry = pvhEntry;
    }

    public bool Is64Bit { get; }

    /// <summary>e_entry as written in the header.</summary>
    public ulong Entry { get; }

    public IReadOnlyList<ElfSegment> Segments { get; }

    /// <summary>The PVH entry (XEN_ELFNOTE_PHYS32_ENTRY), when the image has one.</summary>
    public ulong? PvhEntry { get; }

    /// <summary>Lowest p_paddr of the PT_LOAD segments.</summary>
    public ulong LowestPhysical => Segments.Min(s => s.PhysicalAddress);

    /// <summary>Highest p_paddr + p_memsz of the PT_LOAD segments.</summary>
    public ulong HighestPhysicalEnd => Segments.Max(s => s.PhysicalAddress + s.MemorySize);

    public static bool LooksLikeElf(ReadOnlySpan<byte> file) =>
        file.Length >= 4 && file[0] == 0x7F && file[1] == (byte)'E' && file[2] == (byte)'L' && file[3] == (byte)'F';

    /// <summary>Parses and validates an x86 ELF executable; malformed files are <see cref="UserErrorException"/>s.</summary>
    public static ElfImage Parse(byte[] file, string name = "kernel")
    {
        var f = file.AsSpan();
        if (!LooksLikeElf(f) || file.Length < 52)
        {
            throw new UserErrorException($"{name}: not an ELF file");
        }
        bool is64 = file[4] switch
        {
            1 => false,
            2 => true,
            _ => throw new UserErrorException($"{name}: invalid ELF class {file[4]}"),
        };
        if (file[5] != 1)
        {
            throw new UserErrorException($"{name}: ELF file is not little-endian");
        }
        if (is64 && file.Length < 64)
        {
            throw new UserErrorException($"{name}: truncated ELF64 header");
        }
        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(f[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(f[18..]);
        if (type != EtExec)
        {
            throw new UserErrorException($"{name}: ELF type {type} is not an executable (ET_EXEC)");
        }
        if (machine != (is64 ? EmX8664 : EmI386))
        {
            throw new UserErrorException($"{name}: ELF machine {machine} is not {(is64 ? "x86-64" : "i386")}");
        }
        ulong entry = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(f[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(f[24..]);
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(f[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(f[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(f[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(f[(is64 ? 56 : 44)..]);
        int minEntry = is64 ? 56 : 32;
        if (phnum == 0 || phentsize < minEntry || phoff > (ulong)file.Length || (ulong)phnum * (ulong)phentsize > (ulong)file.Length - phoff)
        {
            throw new UserErrorException($"{name}: ELF program headers (offset 0x{phoff:x}, {phnum} x {phentsize} bytes) are missing or out of the file");
        }

        var segments = new List<ElfSegment>();
        ulong? pvhEntry = null;
        for (int i = 0; i < phnum; i++)
        {
            var ph = f.Slice((int)phoff + i * phentsize, minEntry);
            uint ptype = BinaryPrimitives.ReadUInt32LittleEndian(ph);
            ulong offset, vaddr, paddr, filesz, memsz;
            if (is64)
            {
                offset = BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
                vaddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[16..]);
                paddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]);
                filesz = BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]);
                memsz = BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]);
            }
            else
            {
                offset = BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]);
                vaddr = BinaryPrimitives.ReadUInt32LittleEndian(ph[8..]);
                paddr = BinaryPrimitives.ReadUInt32LittleEndian(ph[12..]);
                filesz = BinaryPrimitives.ReadUInt32LittleEndian(ph[16..]);
                memsz = BinaryPrimitives.ReadUInt32LittleEndian(ph[20..]);
            }
            if (ptype != PtLoad && ptype != PtNote)
            {
                continue;
            }
            if (offset > (ulong)file.Length || filesz > (ulong)file.Length - offset)
            {
                throw new UserErrorException($"{name}: ELF segment {i} (file 0x{offset:x}+0x{filesz:x}) extends past the end of the {file.Length}-byte file");
            }
            if (ptype == PtNote)
            {
                pvhEntry ??= FindPvhEntry(f.Slice((int)offset, (int)filesz));
                continue;
            }
            if (filesz > memsz)
            {
                throw new UserErrorException($"{name}: ELF segment {i} has p_filesz 0x{filesz:x} larger than p_memsz 0x{memsz:x}");
            }
            // An ELF32 file describes a 32-bit physical address space, an ELF64 file a 64-bit one.
            if (is64 ? paddr + memsz < paddr : paddr + memsz > 1UL << 32)
            {
                throw new UserErrorException($"{name}: ELF segment {i} at p_paddr 0x{paddr:x} with p_memsz 0x{memsz:x} wraps around the end of the {(is64 ? 64 : 32)}-bit address space");
            }
            if (memsz != 0)
            {
                segments.Add(new ElfSegment(offset, vaddr, paddr, filesz, memsz));
            }
        }
        if (segments.Count == 0)
        {
            throw new UserErrorException($"{name}: ELF file has no loadable (PT_LOAD) segments");
        }
        return new ElfImage(file, is64, entry, segments, pvhEntry);
    }

    // ELF note: namesz, descsz, type, name padded to 4, desc padded to 4 (gABI "Note Section").
    static ulong? FindPvhEntry(ReadOnlySpan<byte> notes)
    {
        while (notes.Length >= 12)
        {
            uint nameSize = BinaryPrimitives.ReadUInt32LittleEndian(notes);
            uint descSize = BinaryPrimitives.ReadUInt32LittleEndian(notes[4..]);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(notes[8..]);
            ulong nameEnd = 12 + (((ulong)nameSize + 3) & ~3UL);
            ulong descEnd = nameEnd + (((ulong)descSize + 3) & ~3UL);
            if (descEnd > (ulong)notes.Length)
            {
                return null;
            }
            var noteName = notes.Slice(12, (int)nameSize);
            if (type == XenElfNotePhys32Entry && noteName.SequenceEqual("Xen\0"u8))
            {
                var desc = notes.Slice((int)nameEnd, (int)descSize);
                // Linux emits the address with _ASM_PTR (8 bytes on x86-64); Xen reads 4 or 8.
                if (descSize >= 8)
                {
                    return BinaryPrimitives.ReadUInt64LittleEndian(desc);
                }
                if (descSize >= 4)
                {
                    return BinaryPrimitives.ReadUInt32LittleEndian(desc);
                }
            }
            notes = notes[(int)descEnd..];
        }
        return null;
    }

    /// <summary>
    /// Physical address of <paramref name="address"/>: taken as physical when a segment's
    /// [p_paddr, +p_memsz) holds it, otherwise translated through the segment whose virtual range holds it.
    /// </summary>
    public ulong? ToPhysical(ulong address)
    {
        foreach (var s in Segments)
        {
            if (address >= s.PhysicalAddress && address - s.PhysicalAddress < s.MemorySize)
            {
                return address;
            }
        }
        foreach (var s in Segments)
        {
            if (address >= s.VirtualAddress && address - s.VirtualAddress < s.MemorySize)
            {
                return address - s.VirtualAddress + s.PhysicalAddress;
            }
        }
        return null;
    }

    /// <summary>
    /// Copies every PT_LOAD segment to its p_paddr and zeroes the p_memsz - p_filesz tail (bss).
    /// A segment outside guest RAM is a <see cref="UserErrorException"/>, raised before anything is written.
    /// </summary>
    public void Load(GuestMemory memory, string name = "kernel")
    {
        foreach (var s in Segments)
        {
            if (!memory.IsRamRange(s.PhysicalAddress, s.MemorySize))
            {
                throw new UserErrorException($"{name}: ELF segment at 0x{s.PhysicalAddress:x}-0x{s.PhysicalAddress + s.MemorySize:x} does not fit in guest RAM ({memory.LowRamEnd >> 20} MiB below 4 GiB); give the guest more memory");
            }
        }
        foreach (var s in Segments)
        {
            BootStructures.Write(memory, s.PhysicalAddress, _file.AsSpan((int)s.FileOffset, (int)s.FileSize));
            ulong bss = s.MemorySize - s.FileSize;
            ulong at = s.PhysicalAddress + s.FileSize;
            var zeros = new byte[Math.Min(bss, 1UL << 20)];
            while (bss != 0)
            {
                int n = (int)Math.Min(bss, (ulong)zeros.Length);
                BootStructures.Write(memory, at, zeros.AsSpan(0, n));
                at += (ulong)n;
                bss -= (ulong)n;
            }
        }
    }
}
