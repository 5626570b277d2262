"""Write data/instruction-data.json: the bundled, offline instruction dataset.

1100 entries in the chapter's format (`instruction`, `input`, `output`) plus a
`task` key naming the family, so scores can be reported per family. Every answer
is short and checked by exact match. The file is ordered for the chapter's split
by position (`split_data`): entries 0-934 train, 935-1044 test, 1045-1099
validation. Each part is shuffled with `random.Random(123)`.

The test and validation parts are held out honestly, in a way a tiny model
(2 layers, width 128, random init, GPT-2's vocabulary) can still generalise to:

* lookup families (capital, continent, language, antonym, next_number): a fact
  cannot be invented, so every held-out fact is in train four times, once under
  each training phrasing; the held-out item asks it with one of two instruction
  templates that never appear in train.
* list families (reverse_list, first_word, last_word): a held-out list is a new
  combination (as a set) of words that every train list draws from.
* repeat_word: the held-out (word, count) pair is unseen; the word and the count
  each appear in train with others.
* unit_conversion: the held-out (unit, number) pair is unseen; the unit converts
  other numbers in train and the number is converted by other units.
* every family also has an instruction template used only outside train; half
  of the held-out items of the non-lookup families use it.

Why no plural or past-tense family: GPT-2's BPE writes most inflected forms as
tokens of their own ("boxes", "played"), so a word that is not in train can
only be inflected by a model that learned spelling, which a tiny model trained
for minutes does not: in probes such families scored 0 of 13 held-out words.

Running the script twice gives byte-identical output; `--check` compares the
committed file with what the script would write and exits 1 if they differ.

    python scripts/make_instruction_data.py            # (re)write the file
    python scripts/make_instruction_data.py --check    # verify the committed file
"""

import argparse
import json
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_PATH = REPO_ROOT / "data" / "instruction-data.json"
SEED = 123

# The chapter's split of 1100 entries: int(1100 * 0.85), int(1100 * 0.10), the rest.
N_TRAIN, N_TEST, N_VAL = 935, 110, 55

# ---------------------------------------------------------------------------
# Word lists (written for this script, from general knowledge). Every entry is
# used; the list lengths follow from the quotas below.
# ---------------------------------------------------------------------------

# (country, capital): 42 countries whose capital is not disputed, not recently
# renamed or moved, and spelled in plain ASCII.
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Hungary", "Budapest"),
    ("Greece", "Athens"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Russia", "Moscow"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Turkey", "Ankara"), ("Egypt", "Cairo"),
    ("Morocco", "Rabat"), ("Kenya", "Nairobi"), ("Ghana", "Accra"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Australia", "Canberra"), ("Canada", "Ottawa"), ("Cuba", "Havana"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Belgium", "Brussels"), ("the Czech Republic", "Prague"),
    ("Ethiopia", "Addis Ababa"), ("Nigeria", "Abuja"), ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
]

# (country, continent): 42 countries that lie on one continent.
CONTINENTS = [
    ("France", "Europe"), ("Germany", "Europe"), ("Italy", "Europe"),
    ("Spain", "Europe"), ("Portugal", "Europe"), ("Ireland", "Europe"),
    ("Austria", "Europe"), ("Poland", "Europe"), ("Hungary", "Europe"),
    ("Greece", "Europe"), ("Sweden", "Europe"), ("Norway", "Europe"),
    ("Finland", "Europe"), ("Romania", "Europe"), ("Croatia", "Europe"),
    ("Morocco", "Africa"), ("Kenya", "Africa"), ("Ghana", "Africa"),
    ("Nigeria", "Africa"), ("Ethiopia", "Africa"), ("Senegal", "Africa"),
    ("Japan", "Asia"), ("China", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"),
    ("India", "Asia"), ("Nepal", "Asia"), ("Mongolia", "Asia"),
    ("Canada", "North America"), ("Mexico", "North America"),
    ("Cuba", "North America"), ("Jamaica", "North America"),
    ("Argentina", "South America"), ("Peru", "South America"),
    ("Chile", "South America"), ("Brazil", "South America"),
    ("Colombia", "South America"), ("Uruguay", "South America"),
    ("Venezuela", "South America"), ("Belgium", "Europe"), ("Uganda", "Africa"),
    ("Pakistan", "Asia"),
]

# (country, main language): 42 countries with one clear main language.
LANGUAGES = [
    ("France", "French"), ("Germany", "German"), ("Austria", "German"),
    ("Italy", "Italian"), ("Spain", "Spanish"), ("Mexico", "Spanish"),
    ("Argentina", "Spanish"), ("Chile", "Spanish"), ("Colombia", "Spanish"),
    ("Cuba", "Spanish"), ("Portugal", "Portuguese"), ("Brazil", "Portuguese"),
    ("Poland", "Polish"), ("Hungary", "Hungarian"), ("Greece", "Greek"),
    ("Sweden", "Swedish"), ("Norway", "Norwegian"), ("Denmark", "Danish"),
    ("Finland", "Finnish"), ("Russia", "Russian"), ("Ukraine", "Ukrainian"),
    ("Romania", "Romanian"), ("Bulgaria", "Bulgarian"), ("Croatia", "Croatian"),
    ("Serbia", "Serbian"), ("Slovakia", "Slovak"), ("Estonia", "Estonian"),
    ("Latvia", "Latvian"), ("Lithuania", "Lithuanian"), ("Iceland", "Icelandic"),
    ("the Netherlands", "Dutch"), ("Turkey", "Turkish"), ("Japan", "Japanese"),
    ("South Korea", "Korean"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"),
    ("Iran", "Persian"), ("Egypt", "Arabic"), ("Saudi Arabia", "Arabic"),
    ("Indonesia", "Indonesian"), ("Mongolia", "Mongolian"), ("Slovenia", "Slovenian"),
]

# (word, antonym): 42 pairs, one direction each, each with one clear opposite.
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("tall", "short"), ("fast", "slow"),
    ("happy", "sad"), ("early", "late"), ("full", "empty"), ("strong", "weak"),
    ("rich", "poor"), ("young", "old"), ("thick", "thin"), ("wet", "dry"),
    ("hard", "soft"), ("loud", "quiet"), ("clean", "dirty"), ("heavy", "light"),
    ("wide", "narrow"), ("deep", "shallow"), ("high", "low"), ("true", "false"),
    ("buy", "sell"), ("remember", "forget"), ("above", "below"),
    ("inside", "outside"), ("before", "after"), ("always", "never"),
    ("north", "south"), ("east", "west"), ("day", "night"), ("friend", "enemy"),
    ("war", "peace"), ("love", "hate"), ("sweet", "sour"), ("cheap", "expensive"),
    ("easy", "difficult"), ("polite", "rude"), ("awake", "asleep"),
    ("near", "far"), ("ancient", "modern"), ("push", "pull"), ("win", "lose"),
    ("open", "closed"),
]

# Words for the list families. A small pool on purpose: each word is one GPT-2
# token with and without a leading space, and appears in many train lists, so a
# tiny model learns to copy every one of them; held-out lists are then new
# combinations of well-known words.
LIST_WORDS = [
    "apple", "river", "stone", "chair", "table", "music", "paper", "water",
    "window", "orange", "bread", "horse", "money", "phone", "field", "bridge",
]

# (from-unit, to-unit, factor). Only 100 and 1000, with two-digit numbers whose
# product BPE writes as the number's token plus "00" or "000" ("37000" ->
# "37" + "000"): converting is copying the number and adding the unit's zeros.
UNITS = [
    ("kilometers", "meters", 1000), ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000), ("meters", "centimeters", 100),
    ("dollars", "cents", 100), ("centuries", "years", 100),
]
UNIT_NUMBERS = [13, 14, 17, 21, 23, 24, 26, 27, 28, 29, 33, 34, 35, 36, 37, 38, 39, 43, 44, 45]

NEXT_NUMBERS = range(11, 53)

REPEATS = {2: "twice", 3: "three times", 4: "four times"}

# ---------------------------------------------------------------------------
# Instruction templates. Each family: training templates and held-out templates
# (used only in test and validation). A template is (instruction, input) with
# fields in braces. Words are quoted with double quotes: after a single quote
# GPT-2's BPE splits "'sheep" as "'s" + "heep".
# ---------------------------------------------------------------------------

TEMPLATES = {
    "capital": (
        [("What is the capital of {x}?", ""),
         ("Name the capital city of {x}.", ""),
         ("Which city is the capital of {x}?", ""),
         ("What is the capital city of the country below?", "{x}")],
        [("Tell me the capital of {x}.", ""),
         ("Which city serves as the capital of {x}?", "")],
    ),
    "antonym": (
        [('What is the opposite of "{x}"?', ""),
         ('Give the antonym of "{x}".', ""),
         ('Name a word that means the opposite of "{x}".', ""),
         ('Which word is the antonym of "{x}"?', "")],
        [('Tell me the opposite of "{x}".', ""),
         ('What word means the opposite of "{x}"?', "")],
    ),
    "next_number": (
        [("What number comes after {x}?", ""),
         ("What is the next number after {x}?", ""),
         ("Which number follows {x}?", ""),
         ("Write the number that follows {x}.", "")],
        [("Name the number that comes right after {x}.", ""),
         ("What number is one more than {x}?", "")],
    ),
    "reverse_list": (
        [("Reverse the order of the words in this list.", "{x}"),
         ("Write the words below in reverse order.", "{x}"),
         ("Put the following words in reverse order.", "{x}")],
        [("Rewrite this list backwards, starting with the last word.", "{x}")],
    ),
    "continent": (
        [("On which continent is {x}?", ""),
         ("Which continent is {x} in?", ""),
         ("Name the continent where {x} lies.", ""),
         ("Which continent is the country below on?", "{x}")],
        [("Tell me the continent of {x}.", ""),
         ("Which continent does {x} belong to?", "")],
    ),
    "language": (
        [("What is the main language spoken in {x}?", ""),
         ("Which language do most people in {x} speak?", ""),
         ("Name the main language of {x}.", ""),
         ("What language is mainly spoken in the country below?", "{x}")],
        [("Tell me the main language of {x}.", ""),
         ("Which language is spoken by most people in {x}?", "")],
    ),
    "first_word": (
        [("What is the first word in the list below?", "{x}"),
         ("Which word comes first in this list?", "{x}"),
         ("Write the first word of the following list.", "{x}")],
        [("Return only the first word from this list.", "{x}")],
    ),
    "last_word": (
        [("What is the last word in the list below?", "{x}"),
         ("Which word comes last in this list?", "{x}"),
         ("Write the last word of the following list.", "{x}")],
        [("Return only the last word from this list.", "{x}")],
    ),
    "unit_conversion": (
        [("Convert {n} {frm} to {to}.", ""),
         ("How many {to} are in {n} {frm}?", ""),
         ("What is {n} {frm} in {to}?", "")],
        [("{n} {frm} equals how many {to}?", "")],
    ),
    "repeat_word": (
        [('Repeat the word "{x}" {times}.', ""),
         ('Write the word "{x}" {times}.', ""),
         ('Write "{x}" {times}, separated by spaces.', "")],
        [('Write out the word "{x}" {times} in a row.', "")],
    ),
}

# (train, test, validation) per family; the columns add up to 935 / 110 / 55.
QUOTAS = {
    "capital": (93, 11, 6),
    "continent": (93, 11, 6),
    "language": (93, 11, 6),
    "antonym": (93, 11, 6),
    "next_number": (93, 11, 6),
    "reverse_list": (94, 11, 5),
    "first_word": (94, 11, 5),
    "last_word": (94, 11, 5),
    "unit_conversion": (94, 11, 5),
    "repeat_word": (94, 11, 5),
}
FAMILIES = list(QUOTAS)  # this order fixes the order the random generator is used in

# Train phrasings of each held-out fact of a lookup family (one per template).
LOOKUP_REPEATS = 4


def check_word_lists():
    """Catch slips in the tables: no key repeats, no list word repeats."""
    for table in (CAPITALS, CONTINENTS, LANGUAGES, ANTONYMS):
        keys = [k for k, _ in table]
        assert len(keys) == len(set(keys)), "duplicate key"
    assert len(set(LIST_WORDS)) == len(LIST_WORDS)


def entry(task, template, output, **fields):
    instruction, input_text = template
    return {
        "instruction": instruction.format(**fields),
        "input": input_text.format(**fields),
        "output": output,
        "task": task,
    }


def held_templates_for(rng, n, train_templates, held_templates):
    """Templates for n held-out items: even positions use a held-out template."""
    return [
        rng.choice(held_templates) if i % 2 == 0 else rng.choice(train_templates)
        for i in range(n)
    ]


# ---------------------------------------------------------------------------
# Lookup families: held-out facts are in train, under the other phrasings.
# ---------------------------------------------------------------------------

def lookup_family(rng, task, facts, quota):
    """Each held-out fact: once under every train template, then under a held-out one.

    The other facts fill the rest of train, once each.
    """
    n_train, n_test, n_val = quota
    train_templates, held_templates = TEMPLATES[task]
    assert len(train_templates) == LOOKUP_REPEATS
    n_held = n_test + n_val
    assert len(facts) == n_held + n_train - LOOKUP_REPEATS * n_held, (task, len(facts))
    facts = list(facts)
    rng.shuffle(facts)
    held, others = facts[:n_held], facts[n_held:]
    train = [entry(task, t, value, x=key) for key, value in held for t in train_templates]
    train += [entry(task, rng.choice(train_templates), value, x=key) for key, value in others]
    held_items = [entry(task, rng.choice(held_templates), value, x=key) for key, value in held]
    return train, held_items[:n_test], held_items[n_test:]


def capital_family(rng, quota):
    return lookup_family(rng, "capital", CAPITALS, quota)


def antonym_family(rng, quota):
    return lookup_family(rng, "antonym", ANTONYMS, quota)


def next_number_family(rng, quota):
    facts = [(str(n), str(n + 1)) for n in NEXT_NUMBERS]
    return lookup_family(rng, "next_number", facts, quota)


# ---------------------------------------------------------------------------
# List families: held-out lists are new combinations (as sets) of the words.
# ---------------------------------------------------------------------------

def join(words):
    return ", ".join(words)


def new_lists(rng, n, lengths, seen_sets):
    """n lists of distinct words whose word sets are not in `seen_sets` (then added)."""
    lists = []
    while len(lists) < n:
        candidate = rng.sample(LIST_WORDS, lengths[len(lists) % len(lengths)])
        key = frozenset(candidate)
        if key not in seen_sets:
            seen_sets.add(key)
            lists.append(candidate)
    return lists


def list_family(rng, task, quota, lengths, seen_sets, make):
    """Train lists first, then held-out lists with word sets no list has used.

    `make(rng, i, lst, held)` returns the entry for the i-th list.
    """
    n_train, n_test, n_val = quota
    train_lists = new_lists(rng, n_train, lengths, seen_sets)
    held_lists = new_lists(rng, n_test + n_val, lengths, seen_sets)
    train = [make(rng, i, lst, False) for i, lst in enumerate(train_lists)]
    held = [make(rng, i, lst, True) for i, lst in enumerate(held_lists)]
    return train, held[:n_test], held[n_test:]


def reverse_list_family(rng, quota, seen_sets):
    train_templates, held_templates = TEMPLATES["reverse_list"]

    def make(rng, i, lst, held):
        use_held = held and i % 2 == 0
        template = rng.choice(held_templates if use_held else train_templates)
        return entry("reverse_list", template, join(lst[::-1]), x=join(lst))

    return list_family(rng, "reverse_list", quota, [3], seen_sets, make)


def first_word_family(rng, quota, seen_sets):
    """The first word of a list of 3 to 5 words."""
    train_templates, held_templates = TEMPLATES["first_word"]

    def make(rng, i, lst, held):
        use_held = held and i % 2 == 0
        template = rng.choice(held_templates if use_held else train_templates)
        return entry("first_word", template, lst[0], x=join(lst))

    return list_family(rng, "first_word", quota, [3, 4, 5], seen_sets, make)


def last_word_family(rng, quota, seen_sets):
    """The last word of a list of 3 to 5 words."""
    train_templates, held_templates = TEMPLATES["last_word"]

    def make(rng, i, lst, held):
        use_held = held and i % 2 == 0
        template = rng.choice(held_templates if use_held else train_templates)
        return entry("last_word", template, lst[-1], x=join(lst))

    return list_family(rng, "last_word", quota, [3, 4, 5], seen_sets, make)


def repeat_word_family(rng, quota):
    """Held-out (word, count) pairs are unseen; the word and the count are each in train."""
    n_train, n_test, n_val = quota
    train_templates, held_templates = TEMPLATES["repeat_word"]
    n_held = n_test + n_val
    combos = [(w, k) for w in LIST_WORDS for k in REPEATS]
    rng.shuffle(combos)
    held = []
    for word, k in combos:
        # keep at least one count of every word for train
        if len(held) < n_held and sum(w == word for w, _ in held) < len(REPEATS) - 1:
            held.append((word, k))
    train_combos = [c for c in combos if c not in held]
    assert len(train_combos) * len(train_templates) >= n_train
    train = []
    for word, k in train_combos:
        for template in train_templates:
            train.append(entry("repeat_word", template, " ".join([word] * k),
                               x=word, times=REPEATS[k]))
    rng.shuffle(train)
    train = train[:n_train]
    trained_words = {e["instruction"].split('"')[1] for e in train}
    trained_counts = {e["output"].count(" ") + 1 for e in train}
    assert all(w in trained_words and k in trained_counts for w, k in held)
    templates = held_templates_for(rng, n_held, train_templates, held_templates)
    held_items = [
        entry("repeat_word", t, " ".join([w] * k), x=w, times=REPEATS[k])
        for t, (w, k) in zip(templates, held)
    ]
    return train, held_items[:n_test], held_items[n_test:]


# ---------------------------------------------------------------------------
# Unit conversion: held-out (unit, number) pairs are unseen combinations.
# ---------------------------------------------------------------------------

def unit_entry(template, frm, to, factor, n):
    return entry("unit_conversion", template, str(n * factor), n=n, frm=frm, to=to)


def unit_conversion_family(rng, quota):
    """Each held-out number is converted in train by two other units at least."""
    n_train, n_test, n_val = quota
    train_templates, held_templates = TEMPLATES["unit_conversion"]
    combos = [(u, n) for u in UNITS for n in UNIT_NUMBERS]
    rng.shuffle(combos)
    held = []
    for unit, n in combos:
        # at most one held-out unit per number, so the number trains with the rest
        if len(held) < n_test + n_val and all(m != n for _, m in held):
            held.append((unit, n))
    train_combos = [c for c in combos if c not in held][:n_train]
    assert len(train_combos) == n_train
    for unit, n in held:
        assert sum(m == n for _, m in train_combos) >= 2, n
        assert any(u == unit for u, _ in train_combos), unit
    train = [unit_entry(rng.choice(train_templates), *u, n) for u, n in train_combos]
    templates = held_templates_for(rng, len(held), train_templates, held_templates)
    held_items = [unit_entry(t, *u, n) for t, (u, n) in zip(templates, held)]
    return train, held_items[:n_test], held_items[n_test:]


# ---------------------------------------------------------------------------

def generate():
    """Return the 1100 entries in file order: train, then test, then validation."""
    check_word_lists()
    rng = random.Random(SEED)
    seen_sets = set()  # word sets of all lists so far, shared by the list families
    makers = {
        "capital": lambda q: capital_family(rng, q),
        "antonym": lambda q: antonym_family(rng, q),
        "next_number": lambda q: next_number_family(rng, q),
        "language": lambda q: lookup_family(rng, "language", LANGUAGES, q),
        "reverse_list": lambda q: reverse_list_family(rng, q, seen_sets),
        "first_word": lambda q: first_word_family(rng, q, seen_sets),
        "last_word": lambda q: last_word_family(rng, q, seen_sets),
        "continent": lambda q: lookup_family(rng, "continent", CONTINENTS, q),
        "unit_conversion": lambda q: unit_conversion_family(rng, q),
        "repeat_word": lambda q: repeat_word_family(rng, q),
    }
    train, test, val = [], [], []
    for task in FAMILIES:
        part_train, part_test, part_val = makers[task](QUOTAS[task])
        assert (len(part_train), len(part_test), len(part_val)) == QUOTAS[task], task
        train += part_train
        test += part_test
        val += part_val
    for part in (train, test, val):
        rng.shuffle(part)
    assert (len(train), len(test), len(val)) == (N_TRAIN, N_TEST, N_VAL)
    data = train + test + val
    keys = [(e["instruction"], e["input"]) for e in data]
    assert len(set(keys)) == len(keys), "an (instruction, input) pair repeats"
    return data


def render(data):
    """The exact text of the file: 4-space indented JSON, UTF-8, final newline."""
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed file instead of writing it")
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="file to write or check")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        if not args.out.exists() or args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out} differs from what {Path(__file__).name} generates; "
                  f"run it without --check", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    sys.path.insert(0, str(REPO_ROOT))
    from ftlib.plumbing.fileio import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {len(text.splitlines())} lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
