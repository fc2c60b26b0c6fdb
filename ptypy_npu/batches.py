"""Which frames each step takes: the shards (processes) of a scan and their minibatches (numpy).

A distributed run gives every process (rank) a shard of the frames; every step takes
``batch_size / shards`` frames from each shard, so all ranks step together and a single process
holding the same shards one after another (``shard_sizes``) takes the very same steps.
"""
import numpy as np


class Shards:
    """The shards of a scan of ``n`` local frames.

    With a ``communicator`` of several ranks, the shards are the ranks' frame counts and this
    process holds its own; in one process, ``shard_sizes`` (frame counts adding up to ``n``, held
    one after another) or a single shard of all frames.
    """

    def __init__(self, n, communicator, shard_sizes=None):
        if communicator.size > 1:
            if shard_sizes is not None:
                raise ValueError("shard_sizes: a distributed solver takes the ranks' frame counts from its communicator")
            self.sizes, self.offsets = communicator.allgather(n), {communicator.rank: 0}
            return
        self.sizes = [n] if shard_sizes is None else list(shard_sizes)
        if sum(self.sizes) != n or min(self.sizes) < 1:
            raise ValueError(f"shard_sizes must be frame counts >= 1 adding up to the {n} frames, got {shard_sizes}")
        self.offsets = dict(enumerate(np.cumsum([0] + self.sizes[:-1]).tolist()))

    @property
    def total(self):
        """Frames of all shards."""
        return sum(self.sizes)

    def epoch(self, batch_size, rng):
        """This process's frames for every step of one epoch, (steps, local batch) indices into its data.

        Every shard is shuffled and cut into rows of ``batch_size / shards`` frames, filled up to the
        longest shard's number of steps, so every step has one shape; each process draws the order of
        every shard from ``rng``, so the shared random state stays equal on all ranks.
        """
        per_shard = batch_size // len(self.sizes)
        steps = -(-max(self.sizes) // per_shard)
        parts = []
        for shard, size in enumerate(self.sizes):
            order = np.resize(rng.permutation(size), steps * per_shard).reshape(steps, per_shard)
            if shard in self.offsets:
                parts.append(order + self.offsets[shard])
        return np.concatenate(parts, axis=1)

    def in_order(self, n, batch_size):
        """This process's ``n`` frames in order, in rows of the steps' local batch shape (the last
        row filled up from the start), for evaluating without a step."""
        size = batch_size // len(self.sizes) * len(self.offsets)
        return np.resize(np.arange(n), -(-n // size) * size).reshape(-1, size)
