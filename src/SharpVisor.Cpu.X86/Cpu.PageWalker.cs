namespace SharpVisor.Cpu.X86;

/// <summary>Result of one page walk: the physical address, or a #PF error code in <see cref="Fault"/>.</summary>
public struct WalkResult
{
    public ulong Physical;
    /// <summary>0 when the translation succeeded, else the #PF error code with bit 31 set as a marker.</summary>
    public uint Fault;
    public bool AllowRead, AllowWrite, AllowExecute, Global, LargePage;
}

/// <summary>
/// The page walker: 32-bit, PAE, 4-level and 5-level paging (SDM Vol. 3A 4.3, 4.4, 4.5), access
/// rights (4.6), accessed/dirty updates (4.8), and #PF error codes (4.7).
/// </summary>
public sealed unsafe partial class Cpu
{
    /// <summary>MAXPHYADDR advertised in CPUID 0x80000008; entry bits above it are reserved.</summary>
    public const int PhysAddrBits = 40;
    const ulong PhysAddrMask = ((1UL << PhysAddrBits) - 1) & ~0xFFFUL;
    const ulong PfPresent = 1, PfWrite = 2, PfUser = 4, PfReserved = 8, PfFetch = 16;
    const uint FaultMarker = 0x8000_0000;

    const ulong PteP = 1, PteRw = 2, PteUs = 4, PteA = 0x20, PteD = 0x40, PtePs = 0x80, PteG = 0x100;
    const ulong PteXd = 1UL << 63;

    WalkResult Walk(ulong la, Access access, bool user, bool implicitSupervisor)
    {
        if (!Paging)
        {
            ulong pa = LongModeActive ? la : la & 0xFFFF_FFFF;
            return new WalkResult { Physical = pa, AllowRead = true, AllowWrite = true, AllowExecute = true };
        }
        if ((Cr4Value & X86.Cr4.PAE) == 0)
        {
            return Walk32(la, access, user, implicitSupervisor);
        }
        return WalkPae(la, access, user, implicitSupervisor);
    }

    /// <summary>PAE, 4-level and 5-level paging: 64-bit entries, 9 bits of index per level.</summary>
    WalkResult WalkPae(ulong la, Access access, bool user, bool implicitSupervisor)
    {
        bool nxe = (EferValue & Efer.NXE) != 0;
        ulong reservedHigh = ~PhysAddrMask & 0x000F_FFFF_FFFF_F000UL; // bits 51:MAXPHYADDR
        ulong xdReserved = nxe ? 0 : PteXd;
        int levels;
        ulong table;
        ulong rw = PteRw, us = PteUs, xd = 0;
        if (LongModeActive)
        {
            levels = (Cr4Value & X86.Cr4.LA57) != 0 ? 5 : 4;
            int vaBits = levels == 5 ? 57 : 48;
            if (SignExtend(la, vaBits) != la)
            {
                // Non-canonical: a #GP, not a #PF (SDM Vol. 3A 3.3.7.1). Explicit operands, stack
                // accesses and branch targets were checked before (Cpu.Canonical.cs, #SS for stack
                // references); what gets here (string instructions, XLAT, system accesses) is #GP.
                throw GeneralProtection();
            }
            table = Cr3 & PhysAddrMask;
        }
        else
        {
            levels = 2;
            ulong pdpteAddr = (Cr3 & 0xFFFF_FFE0) + ((la >> 30) & 3) * 8;
            ulong pdpte = PhysRead(pdpteAddr, 8);
            if ((pdpte & PteP) == 0)
            {
                return PfResult(access, user, implicitSupervisor, 0);
            }
            if ((pdpte & (reservedHigh | 0x1E6 | PteXd)) != 0)
            {
                return PfResult(access, user, implicitSupervisor, PfPresent | PfReserved);
            }
            table = pdpte & PhysAddrMask;
        }

        int shift = 12 + 9 * (levels - 1);
        int pageShift = 12;
        bool large = false;
        ulong entry = 0, entryAddr = 0;
        var touched = new TouchedEntries();
        for (int level = levels; level >= 1; level--, shift -= 9)
        {
            entryAddr = table + ((la >> shift) & 0x1FF) * 8;
            entry = PhysRead(entryAddr, 8);
            if ((entry & PteP) == 0)
            {
                return PfResult(access, user, implicitSupervisor, 0);
            }
            ulong reserved = reservedHigh | xdReserved;
            bool leaf = level == 1 || (entry & PtePs) != 0;
            if ((entry & PtePs) != 0)
            {
                // PS is reserved in PML5E/PML4E; 1 GiB pages at PDPTE level (advertised), 2 MiB at PDE.
                if (level >= 4 || (level == 3 && !LongModeActive))
                {
                    reserved |= PtePs;
                }
                else if (level > 1)
                {
                    // Large-page frame bits below the page size (other than PAT at bit 12) are reserved.
                    reserved |= ((1UL << shift) - 1) & ~0x1FFFUL;
                }
            }
            if ((entry & reserved) != 0)
            {
                return PfResult(access, user, implicitSupervisor, PfPresent | PfReserved);
            }
            rw &= entry;
            us &= entry;
            xd |= entry & PteXd & (nxe ? PteXd : 0);
            touched.Add(entryAddr, entry);
            if (leaf && level > 1)
            {
                large = true;
                pageShift = shift;
                break;
            }
            table = entry & PhysAddrMask;
        }
        ulong offsetMask = (1UL << pageShift) - 1;
        ulong physical = (entry & PhysAddrMask & ~offsetMask) | (la & offsetMask);
        return Finish(physical, access, user, implicitSupervisor, rw != 0, us != 0, xd != 0,
            (entry & PteG) != 0, large, ref touched, entryAddr, entry);
    }

    /// <summary>32-bit paging (SDM 4.3): 4-byte entries, 4 MiB pages with CR4.PSE (PSE-36 high bits).</summary>
    WalkResult Walk32(ulong la, Access access, bool user, bool implicitSupervisor)
    {
        var touched = new TouchedEntries();
        ulong pdeAddr = (Cr3 & 0xFFFF_F000) + ((la >> 22) & 0x3FF) * 4;
        ulong pde = PhysRead(pdeAddr, 4);
        if ((pde & PteP) == 0)
        {
            return PfResult(access, user, implicitSupervisor, 0);
        }
        touched.Add(pdeAddr, pde);
        if ((pde & PtePs) != 0 && (Cr4Value & X86.Cr4.PSE) != 0)
        {
            if ((pde & (1UL << 21)) != 0)
            {
                return PfResult(access, user, implicitSupervisor, PfPresent | PfReserved);
            }
            ulong high = ((pde >> 13) & 0xFF) << 32; // PSE-36: PDE bits 20:13 are physical bits 39:32
            ulong physical = (pde & 0xFFC0_0000) | high | (la & 0x3F_FFFF);
            return Finish(physical, access, user, implicitSupervisor, (pde & PteRw) != 0, (pde & PteUs) != 0, false,
                (pde & PteG) != 0, true, ref touched, pdeAddr, pde);
        }
        ulong pteAddr = (pde & 0xFFFF_F000) + ((la >> 12) & 0x3FF) * 4;
        ulong pte = PhysRead(pteAddr, 4);
        if ((pte & PteP) == 0)
        {
            return PfResult(access, user, implicitSupervisor, 0);
        }
        touched.Add(pteAddr, pte);
        return Finish((pte & 0xFFFF_F000) | (la & 0xFFF), access, user, implicitSupervisor,
            (pde & pte & PteRw) != 0, (pde & pte & PteUs) != 0, false, (pte & PteG) != 0, false, ref touched, pteAddr, pte);
    }

    /// <summary>Applies the access-rights rules of SDM 4.6 and updates accessed/dirty bits (4.8).</summary>
    WalkResult Finish(ulong physical, Access access, bool user, bool implicitSupervisor, bool writable, bool userPage,
        bool noExecute, bool global, bool large, ref TouchedEntries touched, ulong leafAddr, ulong leaf)
    {
        bool supervisor = !user || implicitSupervisor;
        bool wp = (Cr0Value & X86.Cr0.WP) != 0;
        bool smep = (Cr4Value & X86.Cr4.SMEP) != 0;
        bool smap = (Cr4Value & X86.Cr4.SMAP) != 0;
        bool ac = (FlagsOther & RFlags.AC) != 0;

        bool canRead, canWrite, canExec;
        if (!supervisor)
        {
            canRead = userPage;
            canWrite = userPage && writable;
            canExec = userPage && !noExecute;
        }
        else
        {
            bool smapBlocks = userPage && smap && (implicitSupervisor || !ac);
            canRead = !smapBlocks;
            canWrite = !smapBlocks && (writable || !wp);
            canExec = !noExecute && !(userPage && smep);
        }
        bool ok = access switch { Access.Read => canRead, Access.Write => canWrite, _ => canExec };
        if (!ok)
        {
            return PfResult(access, user, implicitSupervisor, PfPresent);
        }

        touched.SetAccessed(this);
        bool dirty = (leaf & PteD) != 0;
        if (access == Access.Write && !dirty)
        {
            SetBitsAtomically(leafAddr, PteD, (Cr4Value & X86.Cr4.PAE) != 0 ? 8 : 4);
            dirty = true;
        }
        // A supervisor TLB entry may not cache a user page under SMAP: the AC flag decides per access.
        bool cacheable = !(supervisor && userPage && smap);
        return new WalkResult
        {
            Physical = physical,
            AllowRead = cacheable && canRead,
            AllowWrite = cacheable && canWrite && dirty,
            AllowExecute = canExec,
            Global = global && (Cr4Value & X86.Cr4.PGE) != 0,
            LargePage = large,
        };
    }

    WalkResult PfResult(Access access, bool user, bool implicitSupervisor, ulong bits)
    {
        if (access == Access.Write)
        {
            bits |= PfWrite;
        }
        if (user && !implicitSupervisor)
        {
            bits |= PfUser;
        }
        if (access == Access.Execute && ((EferValue & Efer.NXE) != 0 || (Cr4Value & X86.Cr4.SMEP) != 0))
        {
            bits |= PfFetch;
        }
        return new WalkResult { Fault = (uint)bits | FaultMarker };
    }

    /// <summary>Sets bits in a paging-structure entry as a locked operation (other vCPUs walk too).</summary>
    void SetBitsAtomically(ulong entryAddr, ulong bits, int size)
    {
        long off = Ram.HostOffset(entryAddr);
        if (off < 0)
        {
            return; // tables in MMIO: nothing sensible to update
        }
        Ram.NoteWrite((ulong)off, (ulong)size);
        if (size == 8)
        {
            Interlocked.Or(ref *(ulong*)(Ram.HostBase + off), bits);
        }
        else
        {
            Interlocked.Or(ref *(uint*)(Ram.HostBase + off), (uint)bits);
        }
    }

    /// <summary>The entries a walk passed through, to set their accessed bits once access is granted.</summary>
    struct TouchedEntries
    {
        fixed ulong _addr[5];
        fixed ulong _value[5];
        int _count;

        public void Add(ulong addr, ulong value)
        {
            _addr[_count] = addr;
            _value[_count] = value;
            _count++;
        }

        public void SetAccessed(Cpu cpu)
        {
            int size = (cpu.Cr4Value & X86.Cr4.PAE) != 0 ? 8 : 4;
            for (int i = 0; i < _count; i++)
            {
                if ((_value[i] & PteA) == 0)
                {
                    cpu.SetBitsAtomically(_addr[i], PteA, size);
                }
            }
        }
    }
}
