"""Random draws that belong to examples, not to batches: ``ExampleNoise``.

A draw taken from a generator seeded per batch depends on the batch: on the batch size
(which examples share the batch, and in which order) and on how a cell's examples are
split into shards or resumed. A robust accuracy then moves with ``batch_size`` although
``batch_size`` is not part of what a cell measures (0.775 at batch 50 or 100, 0.780 at
batch 200 for one PGD cell). ``ExampleNoise`` draws each example's numbers from its own
key, derived from the cell's seed and the example's index in its dataset, so the
numbers an example gets do not depend on which examples share its batch, in what order,
or on the device: any batch size and any split into shards give the same draws.

It is counter-based (a keyed integer hash, as Philox and JAX's ``random`` are), not a
stateful generator: a draw is named by a ``stream`` (the attack's name for what it draws:
``("start", restart)``, ``("query", i, "signs")``), and the numbers of example ``e`` in
stream ``s`` are a function of ``(key of e, s, position in the draw)`` alone. Drawing for
a subset of the examples (``noise[idx]``: an attack working on the ones not yet broken)
gives each of them exactly what it would get in the whole batch. The hash is computed
with 64-bit integer tensors holding 32-bit values (products stay below 2**63, so nothing
relies on overflow), the same on every device: the CPU and a GPU draw the same numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive positions before mixing

#: what names a draw: an int, a string, or a tuple of them
Stream = int | str | Sequence[int | str]


def _mix(h: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (xor-shift-multiply, constants below 2**31 so that the
    int64 products never overflow), applied elementwise to values in ``[0, 2**32)``."""
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _M32
    return h ^ (h >> 15)


def _word(*parts: object) -> int:
    """A 32-bit value naming ``parts`` (a seed, a stream), the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class ExampleNoise:
    """Per-example random numbers for a batch, keyed by the examples, not by the batch.

    ``ExampleNoise.of(seed, index)`` keys example ``i`` by ``(seed, index[i])``; the kernel
    builds one per batch from the cell's seed and the examples' indices in their dataset
    and hands it to the attack (``Attack.noise``). ``seeded(s)`` mixes in an attack's own
    seed; ``noise[idx]`` selects examples (positions, or a boolean mask) with their keys.
    Every draw takes a ``stream`` naming it: two draws with the same stream give the same
    numbers, so an attack names each of its draws differently (restart number, query
    number, which quantity). Draws have shape ``(len(self), *shape)`` on the keys' device.
    """

    def __init__(self, keys: Tensor) -> None:
        if keys.dim() != 1:
            raise ValueError(f"ExampleNoise keys must be one per example, shape (N,), not {tuple(keys.shape)}")
        self.keys = keys.to(torch.int64) & _M32

    @classmethod
    def of(cls, seed: int, index: Tensor | Sequence[int], device: torch.device | str | None = None) -> ExampleNoise:
        """Keys for the examples ``index`` (their indices in the dataset) of a run seeded ``seed``."""
        idx = torch.as_tensor(index, dtype=torch.int64, device=device).flatten()
        base = torch.tensor(_word("example-noise", int(seed)), dtype=torch.int64, device=idx.device)
        lo, hi = idx & _M32, (idx >> 32) & _M32  # indices are nonnegative: >> is a logical shift
        return cls(_mix(_mix(base ^ lo) ^ hi))

    def seeded(self, seed: int) -> ExampleNoise:
        """The same examples under another seed (an attack's ``seed`` config): other numbers."""
        return ExampleNoise(_mix(self.keys ^ _word("seed", int(seed))))

    def to(self, device: torch.device | str) -> ExampleNoise:
        return ExampleNoise(self.keys.to(device))

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, idx: Tensor | slice) -> ExampleNoise:
        return ExampleNoise(self.keys[idx])

    def bits(self, shape: Sequence[int], stream: Stream) -> Tensor:
        """32-bit random integers (in an int64 tensor) of shape ``(N, *shape)`` for ``stream``."""
        return self.bits_many(shape, [stream])[:, 0]

    def bits_many(self, shape: Sequence[int], streams: Sequence[Stream]) -> Tensor:
        """``bits(shape, s)`` for each of ``streams`` at once, shape ``(N, len(streams), *shape)``:
        the same numbers, in a few tensor operations instead of a few per stream (Square draws
        its queries' windows and signs a block of queries at a time: one draw per query cost
        about as much as the forward pass of a small model)."""
        words = [_word("stream", *(tuple(s) if isinstance(s, (tuple, list)) else (s,))) for s in streams]
        k = _mix(self.keys[:, None] ^ torch.tensor(words, dtype=torch.int64, device=self.device))[..., None]
        size = math.prod(shape)
        pos = (torch.arange(size, device=self.device, dtype=torch.int64) * _GOLDEN) & _M32
        h = _mix(_mix(k ^ pos) ^ k)
        return h.view(len(self), len(words), *shape)

    def uniform(self, shape: Sequence[int], stream: Stream, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform numbers in ``[0, 1)`` of shape ``(N, *shape)`` (24 random bits: exact in float32)."""
        u = (self.bits(shape, stream) >> 8).to(torch.float32).mul_(2.0**-24)
        return u.to(dtype)

    def normal(self, shape: Sequence[int], stream: Stream, dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal numbers of shape ``(N, *shape)`` (Box-Muller on two uniform draws)."""
        parts = tuple(stream) if isinstance(stream, (tuple, list)) else (stream,)
        u1 = self.uniform(shape, (*parts, "normal-radius")).neg_().add_(1.0)  # (0, 1]: log is finite
        u2 = self.uniform(shape, (*parts, "normal-angle"))
        return u1.log_().mul_(-2.0).sqrt_().mul_(torch.cos(u2.mul_(2 * math.pi))).to(dtype)

    def integers(self, low: int, high: int, stream: Stream, shape: Sequence[int] = ()) -> Tensor:
        """Integers in ``[low, high)`` of shape ``(N, *shape)`` (a modulo of 32 bits: its bias,
        below ``(high - low) / 2**32``, is far under any sampling error an attack sees)."""
        if high <= low:
            raise ValueError(f"integers: empty range [{low}, {high})")
        return self.bits(shape, stream) % (high - low) + low

    def signs(self, shape: Sequence[int], stream: Stream, dtype: torch.dtype = torch.float32) -> Tensor:
        """``-1`` or ``+1`` with equal probability, of shape ``(N, *shape)``."""
        return ((self.bits(shape, stream) >> 31) * 2 - 1).to(dtype)
