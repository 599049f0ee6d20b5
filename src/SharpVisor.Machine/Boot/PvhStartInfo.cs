using System.Buffers.Binary;

namespace SharpVisor.Machine.Boot;

/// <summary>
/// Builds the PVH struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h, version 1)
/// with its module list and memory map; EBX points at it on the PVH entry.
/// </summary>
public static class PvhStartInfo
{
    public const uint Magic = 0x336EC578;
    public const uint Version = 1;
    public const int StartInfoSize = 56;
    public const int ModuleEntrySize = 32;
    public const int MemmapEntrySize = 24;

    /// <summary>Builds start_info and the tables (module list, then memory map) that go at <paramref name="tables"/>.</summary>
    /// <returns>The start_info bytes and the table bytes, to be written by the caller.</returns>
    public static (byte[] StartInfo, byte[] Tables) Build(ulong tables, ulong commandLine, ulong initrdAddress, ulong initrdSize, ulong rsdp, E820Map e820)
    {
        int modules = initrdSize != 0 ? 1 : 0;
        var info = new byte[StartInfoSize];
        var blob = new byte[modules * ModuleEntrySize + e820.Entries.Count * MemmapEntrySize];
        var s = info.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], 0);                   // flags
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], (uint)modules);      // nr_modules
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], modules != 0 ? tables : 0); // modlist_paddr
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], commandLine);        // cmdline_paddr
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], rsdp);               // rsdp_paddr
        ulong memmap = tables + (ulong)(modules * ModuleEntrySize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[40..], memmap);             // memmap_paddr (v1)
        BinaryPrimitives.WriteUInt32LittleEndian(s[48..], (uint)e820.Entries.Count); // memmap_entries

        var b = blob.AsSpan();
        if (modules != 0)
        {
            // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved.
            BinaryPrimitives.WriteUInt64LittleEndian(b, initrdAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(b[8..], initrdSize);
        }
        for (int i = 0; i < e820.Entries.Count; i++)
        {
            // hvm_memmap_table_entry: addr, size, type (E820 numbering), reserved.
            var entry = b.Slice(modules * ModuleEntrySize + i * MemmapEntrySize, MemmapEntrySize);
            var e = e820.Entries[i];
            BinaryPrimitives.WriteUInt64LittleEndian(entry, e.Address);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], (uint)e.Type);
        }
        return (info, blob);
    }
}
