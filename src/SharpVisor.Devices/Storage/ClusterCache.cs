namespace SharpVisor.Devices.Storage;

/// <summary>
/// A bounded least-recently-used cache of whole metadata clusters (qcow2 L2 tables or refcount blocks),
/// keyed by host offset. Write-through: the owner writes a change to the file first, then into the cached
/// copy, so an entry is never newer than the file. Slot buffers are allocated once, on first use.
/// </summary>
sealed class ClusterCache
{
    readonly int _clusterSize;
    readonly byte[]?[] _slots;
    readonly long[] _keys;
    readonly long[] _lastUse;
    readonly Dictionary<long, int> _index;
    long _clock;

    public ClusterCache(int clusterSize, int capacity)
    {
        _clusterSize = clusterSize;
        _slots = new byte[capacity][];
        _keys = new long[capacity];
        _lastUse = new long[capacity];
        _keys.AsSpan().Fill(-1);
        _index = new Dictionary<long, int>(capacity);
    }

    public int Capacity => _slots.Length;

    public byte[]? TryGet(long offset)
    {
        if (!_index.TryGetValue(offset, out int slot))
        {
            return null;
        }
        _lastUse[slot] = ++_clock;
        return _slots[slot];
    }

    /// <summary>Claims a slot for <paramref name="offset"/> (evicting the least recently used); the caller fills it.</summary>
    public byte[] Insert(long offset)
    {
        Remove(offset);
        int victim = 0;
        for (int i = 0; i < _slots.Length; i++)
        {
            if (_keys[i] < 0)
            {
                victim = i;
                break;
            }
            if (_lastUse[i] < _lastUse[victim])
            {
                victim = i;
            }
        }
        if (_keys[victim] >= 0)
        {
            _index.Remove(_keys[victim]);
        }
        _keys[victim] = offset;
        _lastUse[victim] = ++_clock;
        _index[offset] = victim;
        return _slots[victim] ??= new byte[_clusterSize];
    }

    public void Remove(long offset)
    {
        if (_index.Remove(offset, out int slot))
        {
            _keys[slot] = -1;
            _lastUse[slot] = 0;
        }
    }

    public void Clear()
    {
        _index.Clear();
        _keys.AsSpan().Fill(-1);
        _lastUse.AsSpan().Clear();
    }
}
