"""A seeded uniform sample of a stream of rows (the input samples of the non-linear
layers)."""

from __future__ import annotations

import torch


class Reservoir:
    """A uniform random sample, without replacement, of at most ``capacity`` items
    (rows of one length) of a stream, in stream order.

    Bottom-k sampling: every item draws a key ``U(0, 1)`` and the ``capacity`` items
    of smallest key are kept, which is the distribution of Algorithm R. Once full, an
    item can only enter with a key below the largest kept one, ``tau``; so of a batch
    of ``n`` only a ``Binomial(n, tau)`` count of items, at uniformly drawn distinct
    positions, with keys ``U(0, tau)``, is drawn: the cost per batch grows with the
    items that enter (``~ capacity * n / seen``), not with ``n``. Seeded: the same
    stream gives the same sample."""

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"a reservoir needs room for at least one item, got {capacity}")
        self.capacity, self.seed = capacity, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.items: torch.Tensor | None = None        # (kept, row_length) int64, CPU
        self.keys = torch.empty(0, dtype=torch.float64)
        self.index = torch.empty(0, dtype=torch.int64)  # positions in the stream
        self.seen = 0

    @property
    def kept(self) -> int:
        return self.keys.numel()

    def _positions(self, n: int, m: int) -> torch.Tensor:
        """``m`` distinct positions of ``range(n)``, a uniform random subset."""
        g = self.generator
        if 4 * m > n:
            return torch.randperm(n, generator=g)[:m]
        chosen = torch.randint(n, (m,), generator=g).unique()
        while chosen.numel() < m:
            more = torch.randint(n, (2 * (m - chosen.numel()),), generator=g)
            chosen = torch.cat([chosen, more]).unique()
        if chosen.numel() > m:
            chosen = chosen[torch.randperm(chosen.numel(), generator=g)[:m]]
        return chosen

    def add(self, items: torch.Tensor) -> None:
        """Add ``items`` of shape (n, row_length)."""
        n = items.shape[0]
        if self.items is not None and items.shape[1] != self.items.shape[1]:
            raise ValueError(f"rows of {items.shape[1]} after rows of {self.items.shape[1]}")
        if n == 0:
            return
        g = self.generator
        tau = 1.0 if self.kept < self.capacity else float(self.keys.max())
        if tau >= 1.0:
            positions = torch.arange(n)
        else:
            m = int(torch.binomial(torch.tensor([float(n)], dtype=torch.float64),
                                   torch.tensor([tau], dtype=torch.float64), generator=g))
            positions = self._positions(n, m).sort().values
        keys = torch.rand(positions.numel(), generator=g, dtype=torch.float64) * tau
        if keys.numel() > self.capacity:  # gather no more than can be kept
            best = keys.topk(self.capacity, largest=False).indices.sort().values
            keys, positions = keys[best], positions[best]
        new = items[positions.to(items.device)].detach().to("cpu", torch.int64)
        self.keys = torch.cat([self.keys, keys])
        self.index = torch.cat([self.index, positions + self.seen])
        self.items = new if self.items is None else torch.cat([self.items, new])
        if self.kept > self.capacity:
            best = self.keys.topk(self.capacity, largest=False).indices.sort().values
            self.keys, self.index, self.items = (self.keys[best], self.index[best],
                                                 self.items[best])
        self.seen += n

    def sample(self) -> torch.Tensor:
        if self.items is None:
            return torch.zeros(0, 0, dtype=torch.int64)
        return self.items
