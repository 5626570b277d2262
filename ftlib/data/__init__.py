"""The chapter's data: the GPT-2 tokenizer, entries and their prompt, the collate functions, batches.

The names the notebooks use, from the modules of this folder (ftlib's own code
imports each from its module).
"""

from ftlib.data.tokenizer import END_OF_TEXT_ID, get_gpt2_tokenizer  # noqa: F401
from ftlib.data.instructions import (BUNDLED_DATA_PATH, CHAPTER_DATA_URL,
                                     download_and_load_file, format_input, format_response,
                                     InstructionDataset, load_instruction_data, split_data)  # noqa: F401
from ftlib.data.collate import (custom_collate_draft_1, custom_collate_draft_2,
                                custom_collate_fn, instruction_collate_fn, padding_stats)  # noqa: F401
from ftlib.data.packing import block_causal_mask, pack_collate_fn, pack_rows  # noqa: F401
from ftlib.data.batching import (BATCHING_STRATEGIES, EpochSampler, item_lengths,
                                 LengthGroupedBatchSampler, make_loader)  # noqa: F401
