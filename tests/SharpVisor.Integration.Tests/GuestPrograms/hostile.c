/*
 * A hostile guest (issue 16, "keeping them found"): as root, from a seed, performs random
 * operations on every device a guest can reach, to prove that nothing a guest does can crash or
 * hang the VMM. The guest kernel may well die of it; the VMM must not.
 *
 *   hostile SEED OPS
 *
 * Operations: port I/O (legacy ports, PCI I/O BARs, fully random ports), MMIO of every PCI BAR,
 * the local APIC, I/O APIC, HPET and VT-d registers, PCI configuration space through both
 * mechanisms (0xCF8/0xCFC and ECAM), VT-d root/context tables, invalidation queue and interrupt
 * remapping table pointed at random bytes in our own memory, virtqueues set up from user space
 * with random descriptors and addresses, and edu DMA with random addresses and lengths.
 *
 * At the end it powers the machine off itself through ACPI. Left out of the operations, so that
 * the run is not ended at once by the guest itself: the reset and power-off controls (0xCF9, the i8042 reset commands, ACPI SLP_EN, the debug-exit port 0xF4) and COM1,
 * which is the console. Progress goes to /dev/kmsg, whose console output is polled by the kernel
 * and so keeps working when the program has broken interrupt delivery.
 *
 * The device layout is the SharpVisor board's (src/SharpVisor.Machine/Board.cs); PCI devices are
 * found through sysfs. Needs /dev/mem with iomem=relaxed on the kernel command line.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <unistd.h>

#define LAPIC_BASE 0xFEE00000ull
#define IOAPIC_BASE 0xFEC00000ull
#define HPET_BASE 0xFED00000ull
#define VTD_BASE 0xFED90000ull
#define ECAM_BASE 0xB0000000ull
#define ECAM_BUSES 2 /* buses 0 and 1 of the 256 (1 MiB each) */
#define ACPI_PM_BASE 0x600
#define BUFFER_PAGES 64

/* ------------------------------------------------------------------ random numbers */

static uint64_t rng_state;

static uint64_t next_random(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint64_t below(uint64_t n) { return n ? next_random() % n : 0; }

/* A value that is often an edge case: 0, all ones, one bit, small, or anything. */
static uint64_t interesting_value(void)
{
    switch (below(6)) {
    case 0: return 0;
    case 1: return ~0ull;
    case 2: return 1ull << below(64);
    case 3: return below(256);
    case 4: return ~0ull >> below(64);
    default: return next_random();
    }
}

/* ------------------------------------------------------------------ reporting */

static int kmsg = -1;

static void report(const char *format, ...)
{
    char line[256];
    int n = snprintf(line, sizeof line, "<2>hostile: ");
    va_list args;
    va_start(args, format);
    n += vsnprintf(line + n, sizeof line - n, format, args);
    va_end(args);
    if (kmsg >= 0 && write(kmsg, line, n) < 0) {
        /* nothing else to report it on */
    }
}

/* ------------------------------------------------------------------ regions */

struct region {
    const char *name;
    uint64_t phys;
    uint64_t size;
    volatile uint8_t *map; /* MMIO through /dev/mem; NULL for I/O ports */
    int is_port;
};

static struct region regions[64];
static int region_count;
static int devmem = -1;

static void add_mmio(const char *name, uint64_t phys, uint64_t size)
{
    if (region_count == (int)(sizeof regions / sizeof regions[0]) || size == 0)
        return;
    uint64_t page = phys & ~0xFFFull, length = ((phys + size + 0xFFF) & ~0xFFFull) - page;
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, devmem, page);
    if (p == MAP_FAILED) {
        report("cannot map %s at 0x%llx\n", name, (unsigned long long)phys);
        return;
    }
    regions[region_count++] = (struct region){name, phys, size, (volatile uint8_t *)p + (phys - page), 0};
}

static void add_ports(const char *name, uint64_t port, uint64_t count)
{
    if (region_count < (int)(sizeof regions / sizeof regions[0]) && count > 0)
        regions[region_count++] = (struct region){name, port, count, NULL, 1};
}

/* PCI functions from sysfs, with what the operations below need to know of them. */
struct pci_function {
    char address[256];
    unsigned vendor, device;
    uint64_t bar_phys[6], bar_size[6];
    int bar_is_port[6];
    uint8_t config[256];
};

static struct pci_function functions[32];
static int function_count;

static unsigned read_hex_file(const char *dir, const char *file)
{
    char path[300], text[32] = {0};
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/%s", dir, file);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    if (read(fd, text, sizeof text - 1) < 0)
        text[0] = 0;
    close(fd);
    return (unsigned)strtoul(text, NULL, 16);
}

static void find_pci_functions(void)
{
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    while (d && (e = readdir(d)) && function_count < (int)(sizeof functions / sizeof functions[0])) {
        if (e->d_name[0] == '.')
            continue;
        struct pci_function *f = &functions[function_count++];
        snprintf(f->address, sizeof f->address, "%s", e->d_name);
        f->vendor = read_hex_file(e->d_name, "vendor");
        f->device = read_hex_file(e->d_name, "device");
        char path[300];
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/config", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            if (read(fd, f->config, sizeof f->config) < 0)
                memset(f->config, 0, sizeof f->config);
            close(fd);
        }
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource", e->d_name);
        FILE *r = fopen(path, "r");
        for (int bar = 0; r && bar < 6; bar++) {
            unsigned long long start, end, flags;
            if (fscanf(r, "%llx %llx %llx", &start, &end, &flags) != 3)
                break;
            if (start == 0 || end < start)
                continue;
            f->bar_phys[bar] = start;
            f->bar_size[bar] = end - start + 1;
            f->bar_is_port[bar] = (flags & 0x100) != 0; /* IORESOURCE_IO */
            if (f->bar_is_port[bar])
                add_ports(f->address, start, end - start + 1);
            else
                add_mmio(f->address, start, end - start + 1);
        }
        if (r)
            fclose(r);
    }
    if (d)
        closedir(d);
}

/* ------------------------------------------------------------------ our own memory, by physical address */

static uint8_t *buffer;
static uint64_t buffer_phys[BUFFER_PAGES];

static void allocate_buffer(void)
{
    buffer = mmap(NULL, BUFFER_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0);
    if (buffer == MAP_FAILED) {
        report("cannot allocate the DMA buffer\n");
        exit(2);
    }
    int fd = open("/proc/self/pagemap", O_RDONLY);
    for (int i = 0; i < BUFFER_PAGES; i++) {
        uint64_t entry = 0;
        buffer[i * 4096] = (uint8_t)i;
        if (fd >= 0 && pread(fd, &entry, 8, ((uintptr_t)buffer / 4096 + i) * 8) == 8 && (entry >> 63))
            buffer_phys[i] = (entry & ((1ull << 55) - 1)) * 4096;
    }
    if (fd >= 0)
        close(fd);
}

/* A DMA address: mostly inside our buffer, sometimes anywhere. */
static uint64_t dma_address(void)
{
    if (below(4) == 0)
        return interesting_value();
    return buffer_phys[below(BUFFER_PAGES)] + below(4096);
}

static void scribble_buffer(void)
{
    for (int i = 0; i < 64; i++) {
        uint64_t v = below(2) ? dma_address() : interesting_value();
        memcpy(buffer + below(BUFFER_PAGES * 4096 - 8), &v, 8);
    }
}

/* ------------------------------------------------------------------ accesses */

static uint64_t mmio_read(volatile uint8_t *p, int size)
{
    switch (size) {
    case 1: return *p;
    case 2: return *(volatile uint16_t *)p;
    case 4: return *(volatile uint32_t *)p;
    default: return *(volatile uint64_t *)p;
    }
}

static void mmio_write(volatile uint8_t *p, int size, uint64_t v)
{
    switch (size) {
    case 1: *p = (uint8_t)v; break;
    case 2: *(volatile uint16_t *)p = (uint16_t)v; break;
    case 4: *(volatile uint32_t *)p = (uint32_t)v; break;
    default: *(volatile uint64_t *)p = v; break;
    }
}

static volatile uint64_t sink;

/* Ports whose writes end the run: reset, power-off, debug exit, and the console. */
static int forbidden_port_write(unsigned port, uint64_t value, int size)
{
    if (port >= 0x3F8 && port <= 0x3FF)
        return 1;
    if (port == 0xCF9 || port == 0xF4 || port == 0xB2)
        return 1;
    if (port == 0x64) /* i8042: pulse output lines (reset), write output port */
        return (value & 0xF0) == 0xF0 || (value & 0xFF) == 0xD1;
    if (port + size > ACPI_PM_BASE + 4 && port < ACPI_PM_BASE + 6) /* PM1a_CNT: SLP_EN */
        return 1;
    return 0;
}

static void port_access(unsigned port)
{
    int size = 1 << below(3);
    port &= 0xFFFF;
    if (port >= 0x3F8 && port <= 0x3FF)
        return;
    if (below(2)) {
        switch (size) {
        case 1: sink = inb(port); break;
        case 2: sink = inw(port); break;
        default: sink = inl(port); break;
        }
        return;
    }
    uint64_t v = interesting_value();
    if (forbidden_port_write(port, v, size))
        return;
    switch (size) {
    case 1: outb((uint8_t)v, port); break;
    case 2: outw((uint16_t)v, port); break;
    default: outl((uint32_t)v, port); break;
    }
}

static const uint16_t legacy_ports[] = {
    0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, /* PICs, ELCR */
    0x40, 0x41, 0x42, 0x43, 0x61,         /* PIT, port 61 */
    0x70, 0x71,                           /* RTC */
    0x60, 0x64,                           /* i8042 */
    0x600, 0x601, 0x602, 0x603, 0x604, 0x605, 0x608, 0x609, 0x60A, 0x60B, /* ACPI PM */
    0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCFF,    /* PCI configuration mechanism 1 */
    0x80, 0x92, 0x510, 0x511,             /* POST code, port 92, fw_cfg */
};

static void op_port(void)
{
    switch (below(3)) {
    case 0:
        port_access(legacy_ports[below(sizeof legacy_ports / sizeof legacy_ports[0])]);
        break;
    case 1: {
        int ports[64], n = 0;
        for (int i = 0; i < region_count; i++)
            if (regions[i].is_port)
                ports[n++] = i;
        if (n) {
            struct region *r = &regions[ports[below(n)]];
            port_access((unsigned)(r->phys + below(r->size)));
        }
        break;
    }
    default:
        port_access((unsigned)below(0x10000));
    }
}

static void op_mmio(void)
{
    int mmio[64], n = 0;
    for (int i = 0; i < region_count; i++)
        if (!regions[i].is_port)
            mmio[n++] = i;
    if (!n)
        return;
    struct region *r = &regions[mmio[below(n)]];
    int size = 1 << below(4);
    uint64_t offset = below(r->size);
    if (below(4))
        offset &= ~(uint64_t)(size - 1); /* mostly aligned, sometimes not */
    if (offset + size > r->size)
        offset = r->size - size;
    if (below(2))
        sink = mmio_read(r->map + offset, size);
    else
        mmio_write(r->map + offset, size, interesting_value());
}

/* Configuration space: mechanism 1 through 0xCF8/0xCFC, and ECAM. Writes never reach the LPC
 * bridge's ACPI and reset registers only by luck: moving the PM block is allowed to end the run. */
static void op_config(void)
{
    unsigned bus = below(4) ? 0 : below(ECAM_BUSES), dev = below(32), fn = below(8);
    unsigned reg = below(256) & ~3u;
    if (below(2)) {
        outl(0x80000000u | bus << 16 | dev << 11 | fn << 8 | reg, 0xCF8);
        unsigned port = 0xCFC + below(4);
        if (below(2))
            sink = inb(port);
        else
            outb((uint8_t)interesting_value(), port);
        return;
    }
    struct region *ecam = NULL;
    for (int i = 0; i < region_count; i++)
        if (!regions[i].is_port && regions[i].phys == ECAM_BASE)
            ecam = &regions[i];
    if (!ecam)
        return;
    uint64_t offset = (uint64_t)bus << 20 | dev << 15 | fn << 12 | below(4096);
    int size = 1 << below(3);
    offset &= ~(uint64_t)(size - 1);
    if (below(2))
        sink = mmio_read(ecam->map + offset, size);
    else
        mmio_write(ecam->map + offset, size, interesting_value());
}

static struct region *find_region(uint64_t phys)
{
    for (int i = 0; i < region_count; i++)
        if (!regions[i].is_port && regions[i].phys == phys)
            return &regions[i];
    return NULL;
}

/* VT-d: point the root table, invalidation queue and interrupt remapping table at random bytes
 * in our buffer, then turn translation, queued invalidation and remapping on and off. */
static void op_vtd(void)
{
    struct region *vtd = find_region(VTD_BASE);
    if (!vtd)
        return;
    volatile uint8_t *r = vtd->map;
    scribble_buffer();
    switch (below(5)) {
    case 0: /* root table, then SRTP */
        mmio_write(r + 0x20, 8, buffer_phys[below(BUFFER_PAGES)] | (below(4) ? 0 : interesting_value() & 0xC00));
        mmio_write(r + 0x18, 4, 1u << 30);
        break;
    case 1: /* invalidation queue, tail, QIE */
        mmio_write(r + 0x90, 8, buffer_phys[below(BUFFER_PAGES)] | below(8) | (below(2) ? 0x800 : 0));
        mmio_write(r + 0x88, 8, below(256) << 4);
        mmio_write(r + 0x18, 4, 1u << 26);
        break;
    case 2: /* interrupt remapping table, then SIRTP */
        mmio_write(r + 0xB8, 8, buffer_phys[below(BUFFER_PAGES)] | below(16) | (below(2) ? 0x800 : 0));
        mmio_write(r + 0x18, 4, 1u << 24);
        break;
    case 3: /* global command: TE, QIE, IRE, CFI in any combination */
        mmio_write(r + 0x18, 4, (uint32_t)(below(16) << 24) | (uint32_t)(below(2) << 31));
        break;
    default: /* context/IOTLB invalidation registers */
        mmio_write(r + (below(2) ? 0x28 : 0x108), 8, interesting_value() | 1ull << 63);
    }
}

/* edu (1234:11e8): random source, destination, length and direction, then start. */
static void op_edu(void)
{
    for (int i = 0; i < function_count; i++) {
        struct pci_function *f = &functions[i];
        if (f->vendor != 0x1234 || f->device != 0x11e8)
            continue;
        struct region *bar = find_region(f->bar_phys[0]);
        if (!bar)
            return;
        scribble_buffer();
        int to_device = (int)below(2);
        uint64_t inside = 0x40000 + (below(8) ? below(4096) : interesting_value());
        mmio_write(bar->map + 0x80, 8, to_device ? dma_address() : inside);
        mmio_write(bar->map + 0x88, 8, to_device ? inside : dma_address());
        mmio_write(bar->map + 0x90, 8, below(4) ? below(4097) : interesting_value());
        mmio_write(bar->map + 0x98, 8, 1 | (to_device ? 0 : 2) | (below(2) << 2));
        if (below(2))
            mmio_write(bar->map + 0x60, 4, (uint32_t)interesting_value()); /* raise interrupt */
        return;
    }
}

/* Virtio over modern PCI (virtio 1.x 4.1.4): find the common and notify structures through the
 * vendor capabilities, set up queue 0 on our buffer with random descriptors, and kick it. */
static void op_virtqueue(void)
{
    int candidates[32], n = 0;
    for (int i = 0; i < function_count; i++)
        if (functions[i].vendor == 0x1af4)
            candidates[n++] = i;
    if (!n)
        return;
    struct pci_function *f = &functions[candidates[below(n)]];
    volatile uint8_t *common = NULL, *notify = NULL;
    uint32_t multiplier = 0;
    for (unsigned cap = f->config[0x34], hops = 0; cap >= 0x40 && cap < 0xF0 && hops < 48; cap = f->config[cap + 1], hops++) {
        if (f->config[cap] != 0x09)
            continue;
        unsigned type = f->config[cap + 3], bar = f->config[cap + 4];
        uint32_t offset;
        memcpy(&offset, &f->config[cap + 8], 4);
        if (bar >= 6 || f->bar_is_port[bar])
            continue;
        struct region *r = find_region(f->bar_phys[bar]);
        if (!r || offset >= r->size)
            continue;
        if (type == 1)
            common = r->map + offset;
        if (type == 2) {
            notify = r->map + offset;
            memcpy(&multiplier, &f->config[cap + 16], 4);
        }
    }
    if (!common || !notify)
        return;
    scribble_buffer();
    uint16_t queue = (uint16_t)below(3);
    if (below(4) == 0) {
        /* Reset and bring up: ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queue, DRIVER_OK. */
        mmio_write(common + 0x14, 1, 0);
        mmio_write(common + 0x14, 1, 3);
        mmio_write(common + 0x08, 4, 1);
        mmio_write(common + 0x0C, 4, below(2) ? 1 : (uint32_t)interesting_value());
        mmio_write(common + 0x14, 1, 11);
        mmio_write(common + 0x16, 2, queue);
        mmio_write(common + 0x18, 2, below(4) ? 1u << below(8) : (uint16_t)interesting_value());
        mmio_write(common + 0x20, 8, dma_address() & ~15ull);
        mmio_write(common + 0x28, 8, dma_address() & ~1ull);
        mmio_write(common + 0x30, 8, dma_address() & ~3ull);
        mmio_write(common + 0x1C, 2, 1);
        mmio_write(common + 0x14, 1, below(8) ? 15 : (uint8_t)interesting_value());
    }
    mmio_write(common + 0x16, 2, queue);
    uint16_t notify_off = (uint16_t)mmio_read(common + 0x1E, 2);
    /* Random descriptors and avail entries are in the buffer already (scribble_buffer); make a
     * few well-formed-looking ones at the queue's addresses, as far as they are ours. */
    uint64_t desc = mmio_read(common + 0x20, 8), avail = mmio_read(common + 0x28, 8);
    for (int page = 0; page < BUFFER_PAGES; page++) {
        if (buffer_phys[page] == (desc & ~0xFFFull)) {
            for (int i = 0; i < 8 && (desc & 0xFFF) + (i + 1) * 16 <= 4096; i++) {
                uint8_t *d = buffer + page * 4096 + (desc & 0xFFF) + i * 16;
                uint64_t addr = dma_address();
                uint32_t len = (uint32_t)(below(4) ? below(8192) : interesting_value());
                uint16_t flags = (uint16_t)below(8), next = (uint16_t)below(10);
                memcpy(d, &addr, 8), memcpy(d + 8, &len, 4), memcpy(d + 12, &flags, 2), memcpy(d + 14, &next, 2);
            }
        }
        if (buffer_phys[page] == (avail & ~0xFFFull) && (avail & 0xFFF) + 8 <= 4096) {
            uint16_t *ring = (uint16_t *)(buffer + page * 4096 + (avail & 0xFFF));
            ring[1] = (uint16_t)(ring[1] + below(4)); /* idx */
            ring[2] = (uint16_t)below(10);
        }
    }
    uint64_t at = (uint64_t)notify_off * multiplier;
    if (at < 0x10000)
        mmio_write(notify + at, 2, queue);
}

/* Local APIC, I/O APIC and HPET get their own share of plain register operations, with the
 * I/O APIC's index/data pair used as the spec says (82093AA 3.1). */
static void op_interrupt_controllers(void)
{
    struct region *r;
    switch (below(3)) {
    case 0:
        if ((r = find_region(IOAPIC_BASE))) {
            mmio_write(r->map, 4, below(0x40));
            if (below(2))
                sink = mmio_read(r->map + 0x10, 4);
            else
                mmio_write(r->map + 0x10, 4, interesting_value());
        }
        break;
    case 1:
        if ((r = find_region(LAPIC_BASE))) {
            uint64_t offset = below(0x40) << 4;
            if (offset == 0x300 && below(4)) /* ICR: mostly fixed IPIs to self, not INIT/SIPI */
                mmio_write(r->map + 0x300, 4, 0x40000 | (0x20 + below(0xE0)));
            else if (below(2))
                sink = mmio_read(r->map + offset, 4);
            else
                mmio_write(r->map + offset, 4, interesting_value());
        }
        break;
    default:
        if ((r = find_region(HPET_BASE))) {
            uint64_t offset = below(0x400);
            int size = 1 << below(4);
            offset = offset + size > 0x400 ? 0x400 - size : offset;
            if (below(2))
                sink = mmio_read(r->map + offset, size);
            else
                mmio_write(r->map + offset, size, interesting_value());
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: hostile SEED OPS\n");
        return 2;
    }
    unsigned long long seed = strtoull(argv[1], NULL, 0), ops = strtoull(argv[2], NULL, 0);
    rng_state = seed * 0x9E3779B97F4A7C15ull | 1;
    kmsg = open("/dev/kmsg", O_WRONLY);
    if (iopl(3) != 0) {
        report("iopl(3) failed: not root?\n");
        return 2;
    }
    devmem = open("/dev/mem", O_RDWR | O_SYNC);
    if (devmem < 0) {
        report("cannot open /dev/mem\n");
        return 2;
    }
    add_mmio("lapic", LAPIC_BASE, 0x1000);
    add_mmio("ioapic", IOAPIC_BASE, 0x1000);
    add_mmio("hpet", HPET_BASE, 0x400);
    add_mmio("vtd", VTD_BASE, 0x1000);
    add_mmio("ecam", ECAM_BASE, ECAM_BUSES << 20);
    find_pci_functions();
    allocate_buffer();
    report("seed %llu ops %llu: %d regions, %d PCI functions\n", seed, ops, region_count, function_count);

    unsigned long long counts[8] = {0};
    for (unsigned long long op = 1; op <= ops; op++) {
        unsigned kind = (unsigned)below(100);
        if (kind < 20)
            op_port(), counts[0]++;
        else if (kind < 45)
            op_mmio(), counts[1]++;
        else if (kind < 60)
            op_config(), counts[2]++;
        else if (kind < 70)
            op_interrupt_controllers(), counts[3]++;
        else if (kind < 78)
            op_vtd(), counts[4]++;
        else if (kind < 88)
            op_edu(), counts[5]++;
        else
            op_virtqueue(), counts[6]++;
        if (op % 1000 == 0)
            report("op %llu\n", op);
    }
    report("done: port %llu mmio %llu config %llu apic/ioapic/hpet %llu vtd %llu edu %llu virtqueue %llu\n",
           counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6]);
    /* Power off through the ACPI PM1a control register ourselves (SLP_TYP 0 = \_S5 on this board,
     * SLP_EN): the guest kernel may no longer be able to, and this proves the VMM still obeys. */
    outw(1 << 13, ACPI_PM_BASE + 4);
    return 0;
}
