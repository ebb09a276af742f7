"""Deterministic, resumable, rank-sharded batch order.

Each epoch's order is a permutation seeded by (seed, epoch) and padded by wrap-around to a
multiple of ``batch_size × world_size`` (as ``DistributedSampler`` does); rank ``r`` takes
every ``world_size``-th batch. ``start_batch`` skips batches already seen before a resume
without touching the dataset, so no RNG or I/O is spent on them.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """CPU generator for one training step: a pure function of (seed, step, rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


class EpochBatchSampler(Sampler[list[int]]):
    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if num_items <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_items / (self.batch_size * self.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        global_batch = self.batch_size * self.world_size
        total = self.batches_per_epoch() * global_batch
        while len(order) < total:
            order += order[: total - len(order)]
        for batch_index in range(self.start_batch, self.batches_per_epoch()):
            start = batch_index * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size]
