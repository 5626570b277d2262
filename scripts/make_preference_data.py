"""Write data/preference-data.json from data/instruction-data.json (deterministic).

Every instruction entry, in the same order (so `split_data` gives the same
training, test and validation entries), gets a chosen and a rejected response
(`ftlib.training.dpo.make_preference_pair`): a full sentence, "The answer is Bucharest.",
and the bare answer that instruction fine-tuning taught, "Bucharest".

    python scripts/make_preference_data.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data  # noqa: E402
from ftlib.training.dpo import PREFERENCE_DATA_PATH, make_preference_pair  # noqa: E402
from ftlib.plumbing.fileio import atomic_write_json  # noqa: E402


def main():
    pairs = [make_preference_pair(entry) for entry in load_instruction_data(BUNDLED_DATA_PATH)]
    atomic_write_json(PREFERENCE_DATA_PATH, pairs)
    print(f"wrote {len(pairs)} preference pairs to {PREFERENCE_DATA_PATH}")


if __name__ == "__main__":
    main()
