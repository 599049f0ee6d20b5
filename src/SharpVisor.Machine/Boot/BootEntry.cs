namespace SharpVisor.Machine.Boot;

/// <summary>The CPU mode a loader hands control over in.</summary>
public enum BootMode
{
    /// <summary>64-bit long mode, paging on with an identity map (Linux 64-bit boot protocol).</summary>
    Long64,

    /// <summary>32-bit flat protected mode, paging off (PVH, Multiboot v1).</summary>
    Protected32,
}

/// <summary>
/// A segment register's visible selector and hidden descriptor cache, as loaded from the GDT the
/// loader wrote. <see cref="Attributes"/> uses the VMX access-rights layout (SDM Vol. 3C 24.4.1):
/// bits 0-3 type, 4 S, 5-6 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G. <see cref="Limit"/> is the
/// byte-granular effective limit (already scaled by G).
/// </summary>
public readonly record struct BootSegment(ushort Selector, ulong Base, uint Limit, ushort Attributes)
{
    public bool Present => (Attributes & 0x80) != 0;
    public bool Long => (Attributes & 0x2000) != 0;
    public bool DefaultBig => (Attributes & 0x4000) != 0;
    public byte Type => (byte)(Attributes & 0xF);
}

/// <summary>
/// Initial CPU state for the boot processor, produced by a loader and applied by the machine.
/// Registers not listed are zero; interrupts are disabled (RFLAGS = 0x2); the IDT is empty (base 0,
/// limit 0): none of the supported protocols allow the kernel to take interrupts before it loads
/// its own IDT.
/// </summary>
/// <param name="Mode">CPU mode at entry.</param>
/// <param name="Rip">Entry point (guest-physical; paging is off or identity-mapped).</param>
/// <param name="Rsi">Linux 64-bit protocol: physical address of boot_params.</param>
/// <param name="Rax">Multiboot: 0x2BADB002 magic.</param>
/// <param name="Rbx">PVH: hvm_start_info address; Multiboot: multiboot_info address.</param>
/// <param name="Cr0">CR0 (PE, ET, and PG in long mode).</param>
/// <param name="Cr3">Page-table root for long mode, 0 otherwise.</param>
/// <param name="Cr4">CR4 (PAE in long mode).</param>
/// <param name="Efer">IA32_EFER (LME|LMA in long mode).</param>
/// <param name="GdtBase">GDTR base.</param>
/// <param name="GdtLimit">GDTR limit.</param>
/// <param name="Cs">Code segment.</param>
/// <param name="Data">Value for DS, ES, SS, FS and GS.</param>
/// <param name="Tr">Task register (a 32-bit available TSS, as PVH requires; harmless elsewhere).</param>
public sealed record BootEntry(
    BootMode Mode,
    ulong Rip,
    ulong Rsi,
    ulong Rax,
    ulong Rbx,
    ulong Cr0,
    ulong Cr3,
    ulong Cr4,
    ulong Efer,
    ulong GdtBase,
    ushort GdtLimit,
    BootSegment Cs,
    BootSegment Data,
    BootSegment Tr)
{
    public const ulong InitialRflags = 0x2;
}
