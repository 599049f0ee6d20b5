using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// A <see cref="TimerQueue.Timer"/> used as "call me back no later than": a device asks for a
/// callback by a deadline and re-plans inside the callback. A pending earlier deadline is kept and
/// nothing is cancelled (except by <see cref="Restore"/>), because every re-arm or cancel leaves a stale entry in the queue
/// until its deadline passes; a guest re-programming a timer in a loop could otherwise fill the
/// queue. Callbacks must therefore tolerate running early or with nothing to do.
/// </summary>
sealed class DeviceTimer(TimerQueue queue, string name, Action callback)
{
    /// <summary>The value of <see cref="DeadlineNs"/> when no callback is pending.</summary>
    public const long NotArmed = -1;

    readonly TimerQueue.Timer _timer = queue.Create(name, callback);
    long _armedAtNs;

    /// <summary>Ensures a callback at or before <paramref name="deadlineNs"/>.</summary>
    public void EnsureBy(long deadlineNs)
    {
        if (!_timer.IsArmed || deadlineNs < _armedAtNs)
        {
            _armedAtNs = deadlineNs;
            _timer.ArmAt(deadlineNs);
        }
    }

    /// <summary>The virtual time of the pending callback, or <see cref="NotArmed"/> (saved with the device's state).</summary>
    public long DeadlineNs => _timer.IsArmed ? _armedAtNs : NotArmed;

    /// <summary>
    /// Restore: makes the pending callback exactly <paramref name="deadlineNs"/> (or none for
    /// <see cref="NotArmed"/>), so a restored device is called back when the saved one would have been.
    /// </summary>
    public void Restore(long deadlineNs)
    {
        if (deadlineNs == NotArmed)
        {
            _timer.Cancel();
            return;
        }
        _armedAtNs = deadlineNs;
        _timer.ArmAt(deadlineNs);
    }

    /// <summary>Whether <paramref name="deadlineNs"/> can be a saved <see cref="DeadlineNs"/>: none, or a time after power-on.</summary>
    public static bool IsValidDeadline(long deadlineNs) => deadlineNs == NotArmed || deadlineNs >= 0;
}
