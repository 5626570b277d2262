"""Which examples go into which batch, in which order.

`EpochSampler` shuffles like `DataLoader(shuffle=True)`, but from a seed and the
epoch number alone, so a run that resumes from a checkpoint mid-epoch sees the
same order as one that never stopped.
"""

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """A reproducible permutation of range(n) per epoch (call `set_epoch` each epoch).

    Introduced in: notebooks/04_dataloaders.ipynb
    """

    def __init__(self, n, seed=123, shuffle=True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n
