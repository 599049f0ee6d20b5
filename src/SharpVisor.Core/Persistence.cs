using System.Diagnostics.CodeAnalysis;

namespace SharpVisor.Core;

/// <summary>
/// A component whose guest-visible state can be taken out as plain data and put back: the basis of
/// snapshots, live migration and restoring a VM in a fresh process (Firecracker's <c>Persist</c>,
/// rust-vmm virtio-queue's <c>State</c>, QEMU's vmstate play the same role).
/// </summary>
/// <remarks>
/// <para><typeparamref name="TState"/> is a plain record: public init-only properties of primitive
/// types, arrays and other such records, no references to live objects (buses, threads, files), so
/// that a generic serializer can write it and a state can be built from bytes read off a disk or a
/// socket. It carries a <c>Version</c>; <see cref="RestoreState"/> refuses versions it does not know.</para>
/// <para>It is complete: everything the guest can observe (registers, latched values, FIFOs,
/// interrupt lines the component drives, timer deadlines in virtual time) is in it, and nothing
/// derived or cached is (caches are dropped or rebuilt on restore).</para>
/// <para>A state is untrusted input. <see cref="RestoreState"/> validates every field first and, if
/// anything is out of range, throws <see cref="InvalidStateException"/> and leaves the component as
/// it was: a state is applied whole or not at all.</para>
/// </remarks>
public interface IPersistent<TState> where TState : class
{
    /// <summary>The component's current state. Call with the VM paused (no vCPU or device thread running).</summary>
    TState SaveState();

    /// <summary>Replaces the component's state with <paramref name="state"/>, re-arming its timers and re-driving its interrupt outputs.</summary>
    /// <exception cref="InvalidStateException">A field is out of range or inconsistent; nothing was changed.</exception>
    void RestoreState(TState state);
}

/// <summary>
/// A saved state refused on restore: one line naming the component, the field and what is wrong
/// with it. It is a user error (the state came from a file or a stream the user gave), not a VMM bug.
/// </summary>
public sealed class InvalidStateException(string component, string problem)
    : UserErrorException($"{component} state refused: {problem}")
{
    public string Component { get; } = component;

    /// <summary>Throws unless <paramref name="condition"/> holds; <paramref name="problem"/> says which field and why.</summary>
    public static void Check([DoesNotReturnIf(false)] bool condition, string component, string problem)
    {
        if (!condition)
        {
            throw new InvalidStateException(component, problem);
        }
    }

    /// <summary>Refuses a version this build does not know (the only one it knows is <paramref name="supported"/>).</summary>
    public static void CheckVersion(int version, int supported, string component) =>
        Check(version == supported, component, $"version {version} is not supported (this build reads version {supported})");
}
