"""ftlib: instruction fine-tuning of GPT-2-style models, step by step.

Every helper the notebooks use lives here once; the notebooks import it.
See the module map in README.md: data flows one way, and so do imports.
"""

import inspect
import random

__version__ = "0.1.0"


def set_seed(seed=123):
    """Seed Python's and PyTorch's random generators (the chapter uses 123).

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def show_source(obj):
    """Print the source code of an ftlib function or class: what the learner
    reads is exactly what runs and what the tests cover.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    print(inspect.getsource(obj).rstrip())
