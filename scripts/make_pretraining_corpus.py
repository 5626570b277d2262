"""Write data/pretraining-corpus.txt, data/pretraining-facts.json and data/pretraining-only-test.json.

The corpus is what the tiny base model (models/gpt2-tiny-base/) is pretrained on:
plain English prose about the same small world as the instruction data
(scripts/make_instruction_data.py, whose word lists are imported here), with no
instruction format. Each fact is written several times, in several wordings and
sentence orders, inside documents that are shuffled and separated by
`<|endoftext|>`, so a model learns the fact and not one sentence shape.

What is in it:

* countries: every (country, capital / continent / language) fact of the
  instruction data, plus 24 fictional countries (invented plain-ASCII names, each
  two GPT-2 tokens with a first token of its own) with a capital, a continent and
  a language. Nothing outside this corpus can explain a right answer about them.
* antonyms: the instruction data's pairs plus 24 pairs that it never uses;
* numbers: "after 37 comes 38" and counting, for 1 to 99 (the instruction data
  asks about 11 to 52 only);
* units: what a kilometer, a kilogram, ... is, the conversions that the
  instruction data's training split already contains (never a held-out one), and
  conversions of numbers the instruction data never converts;
* lists: short lists read forwards, backwards, by first and last word, and words
  repeated, from 119 words of their own with at most two of the instruction data's
  list words mixed into a list (a held-out list has 3 to 5 of them, so no corpus
  list is one);
* quiz text: questions and answers about the instruction data's countries and
  words, worded like its *training* templates, and about the corpus's own lists,
  words and numbers, in the training wordings and six more per copying family
  (never a held-out wording). The fictional countries and the extra antonyms and
  numbers appear in prose alone; mixing question-answer text about *other*
  entities into pretraining makes stored facts easier to extract later
  (Allen-Zhu & Li, "Physics of Language Models: Part 3.1").

Lists, conversions and answers are also laid out on lines, as the instruction
data's inputs and responses are: GPT-2's BPE writes a word or number at the start
of a line as a different token from the same one after a space ("cat" / " cat";
"2400" is "24" + "00", " 2400" one token), and copying between the two forms is
what the instruction tasks ask for. (Each of these three changes, measured:
README, "The base's corpus".)

data/pretraining-facts.json lists every fact of the corpus as a plain-text
completion ("The capital of Romania is" -> " Bucharest"), for measuring what a
base model knows before any fine-tuning.

data/pretraining-only-test.json asks about the facts that are only in the corpus
(the fictional countries, the extra antonyms, the numbers 53 to 98), worded with
the instruction data's held-out templates, in the instruction data's entry format.

data/pretraining-corpus-augmented.txt (`--augmented`) is the same world, knowledge-
augmented for the question of issue 29 (can fine-tuning reach what only pretraining
stated?): more wordings and orders, full names, facts laid out on lines, and questions
with answers about other entities (AUGMENT, below); the test and facts files are the same.

Running the script twice gives byte-identical files; `--check` compares the
committed files with what the script would write and exits 1 if they differ.

    python scripts/make_pretraining_corpus.py              # (re)write the three files
    python scripts/make_pretraining_corpus.py --augmented  # the augmented corpus instead of the first
    python scripts/make_pretraining_corpus.py --check      # verify the committed files (both corpora)
"""

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_instruction_data as inst  # noqa: E402  (the word lists and templates)

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_PATH = REPO_ROOT / "data" / "pretraining-corpus.txt"
AUGMENTED_CORPUS_PATH = REPO_ROOT / "data" / "pretraining-corpus-augmented.txt"
TEST_PATH = REPO_ROOT / "data" / "pretraining-only-test.json"
FACTS_PATH = REPO_ROOT / "data" / "pretraining-facts.json"
SEED = 123
END_OF_TEXT = "<|endoftext|>"
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")  # ftlib's, the chapter's

# ---------------------------------------------------------------------------
# Facts that appear only in this corpus.
# ---------------------------------------------------------------------------

# (country, capital, continent, language), invented. Every name is two GPT-2
# tokens after a space, and no two names (nor any real answer) share the first
# token, so the first token of an answer already decides it.
FICTIONAL_COUNTRIES = [
    ("Heinania", "Sindun", "Europe", "Oranan"),
    ("Kroresh", "Pendport", "Asia", "Alonic"),
    ("Nirora", "Kirford", "Africa", "Bondic"),
    ("Gandia", "Themvale", "South America", "Ledan"),
    ("Siristan", "Gurun", "North America", "Coulic"),
    ("Pilvia", "Bidholm", "Europe", "Kernese"),
    ("Alamora", "Burnek", "Asia", "Dimi"),
    ("Vinistan", "Selgrad", "Africa", "Bathish"),
    ("Sedora", "Tamholm", "South America", "Nosti"),
    ("Thoumand", "Rothvale", "North America", "Skomic"),
    ("Mistand", "Kunek", "Europe", "Buskan"),
    ("Cavara", "Mindport", "Asia", "Uloustic"),
    ("Darania", "Ponmar", "Africa", "Fastan"),
    ("Oreidia", "Rustos", "South America", "Toulic"),
    ("Holistan", "Vaerek", "North America", "Zuran"),
    ("Doulesh", "Castford", "Europe", "Eleli"),
    ("Oraland", "Mulmar", "Asia", "Gruri"),
    ("Maskesh", "Venport", "Africa", "Pandi"),
    ("Ranora", "Zerford", "South America", "Nuvi"),
    ("Zarora", "Permar", "North America", "Cudi"),
    ("Kovesh", "Dustport", "Europe", "Vanese"),
    ("Gimara", "Temvale", "Asia", "Heili"),
    ("Grandesh", "Bundford", "Africa", "Puman"),
    ("Tinand", "Eloros", "South America", "Valish"),
]

# The augmented corpus only (--augmented): 48 more invented countries, written about in
# prose *and* in question-and-answer text, so that pretraining shows questions being
# answered from facts stated elsewhere; the 24 countries above stay in prose alone.
# Each name is two GPT-2 tokens with a first token no other name or answer has.
QA_COUNTRIES = [
    ('Nedania', 'Dunfield', 'Europe', 'Dodish'),
    ('Kadania', 'Felmark', 'Asia', 'Rasish'),
    ('Muristan', 'Jinbridge', 'Africa', 'Dulian'),
    ('Merand', 'Vikwick', 'South America', 'Nekan'),
    ('Camia', 'Tanwick', 'North America', 'Tidic'),
    ('Bomora', 'Folmouth', 'Europe', 'Mesan'),
    ('Ronora', 'Totdale', 'Asia', 'Sutan'),
    ('Posora', 'Kakmark', 'Africa', 'Hitish'),
    ('Rakavia', 'Tenfield', 'South America', 'Calian'),
    ('Gunia', 'Basmark', 'North America', 'Retic'),
    ('Maristan', 'Nikdale', 'Europe', 'Wasian'),
    ('Pelara', 'Matbridge', 'Asia', 'Jedese'),
    ('Batonia', 'Lemley', 'Africa', 'Homish'),
    ('Rodistan', 'Virbridge', 'South America', 'Zelish'),
    ('Furavia', 'Worbridge', 'North America', 'Gulan'),
    ('Fulia', 'Lanbridge', 'Europe', 'Tulish'),
    ('Kutara', 'Dedburg', 'Asia', 'Jinese'),
    ('Petora', 'Vesdale', 'Africa', 'Sudic'),
    ('Semia', 'Dilfield', 'South America', 'Dasish'),
    ('Hiravia', 'Lorbridge', 'North America', 'Satish'),
    ('Katistan', 'Wendale', 'Europe', 'Misic'),
    ('Patania', 'Sodbridge', 'Asia', 'Celish'),
    ('Kilonia', 'Memdale', 'Africa', 'Wanic'),
    ('Colesh', 'Menmark', 'South America', 'Wedic'),
    ('Gadara', 'Kalton', 'North America', 'Ginan'),
    ('Bonara', 'Zanley', 'Europe', 'Gitic'),
    ('Vitonia', 'Tonbridge', 'Asia', 'Jenian'),
    ('Detia', 'Gutburg', 'Africa', 'Vodic'),
    ('Namania', 'Nidburg', 'South America', 'Padan'),
    ('Sumand', 'Polhaven', 'North America', 'Modish'),
    ('Henand', 'Hinfield', 'Europe', 'Kitian'),
    ('Susavia', 'Lilley', 'Asia', 'Lumese'),
    ('Ferora', 'Wakburg', 'Africa', 'Kulic'),
    ('Fatara', 'Lisley', 'South America', 'Wesish'),
    ('Silania', 'Kolfield', 'North America', 'Binese'),
    ('Vetand', 'Koswick', 'Europe', 'Makian'),
    ('Curavia', 'Golton', 'Asia', 'Hokic'),
    ('Faria', 'Momfield', 'Africa', 'Dinic'),
    ('Sasavia', 'Cosfield', 'South America', 'Conish'),
    ('Nitia', 'Manton', 'North America', 'Ridan'),
    ('Gorania', 'Hedburg', 'Europe', 'Comese'),
    ('Sanesh', 'Denhaven', 'Asia', 'Mitic'),
    ('Kesand', 'Dotmouth', 'Africa', 'Tanish'),
    ('Cesistan', 'Purley', 'South America', 'Lasish'),
    ('Nomora', 'Maston', 'North America', 'Sadian'),
    ('Podania', 'Pedhaven', 'Europe', 'Baran'),
    ('Dumara', 'Hemwick', 'Asia', 'Hurish'),
    ('Melonia', 'Nadburg', 'Africa', 'Gesish'),
]

# (word, antonym) pairs that the instruction data never uses (neither word).
EXTRA_ANTONYMS = [
    ("brave", "cowardly"), ("arrive", "depart"), ("accept", "refuse"),
    ("increase", "decrease"), ("maximum", "minimum"), ("entrance", "exit"),
    ("victory", "defeat"), ("question", "answer"), ("sharp", "dull"),
    ("smooth", "rough"), ("dark", "bright"), ("ugly", "beautiful"),
    ("give", "take"), ("guilty", "innocent"), ("borrow", "lend"),
    ("start", "finish"), ("wild", "tame"), ("fresh", "stale"),
    ("odd", "even"), ("include", "exclude"), ("major", "minor"),
    ("inner", "outer"), ("rise", "fall"), ("ascend", "descend"),
]

# The augmented corpus only: antonym pairs (in none of the lists above) written about in
# prose and in question-and-answer text, as QA_COUNTRIES are.
QA_ANTONYMS = [
    ("alive", "dead"), ("cruel", "kind"), ("safe", "dangerous"), ("top", "bottom"),
    ("front", "back"), ("left", "right"), ("laugh", "cry"), ("simple", "complex"),
    ("public", "private"), ("future", "past"), ("mother", "father"), ("boy", "girl"),
    ("winter", "summer"), ("import", "export"), ("positive", "negative"), ("upper", "lower"),
    ("solid", "liquid"), ("loose", "tight"), ("generous", "selfish"), ("humble", "proud"),
    ("absent", "present"), ("attack", "defend"), ("wise", "foolish"), ("calm", "angry"),
]

NUMBERS = range(1, 100)                 # successors written for 1..99 (-> 100)
EXTRA_NUMBERS = range(53, 99)           # past the instruction data's 11..52
CONVERSION_NUMBERS = [n for n in range(10, 100) if n not in inst.UNIT_NUMBERS]

# Words for the list prose, disjoint from the instruction data's LIST_WORDS: many
# of them (each one GPT-2 token with and without a leading space), so a model learns
# to copy *any* word it is shown, not a handful it has memorised.
PROSE_WORDS = [
    "cat", "dog", "tree", "house", "car", "book", "door", "cup", "ball", "bird", "fish",
    "road", "hat", "box", "star", "bed", "coat", "ship", "boat", "train", "bus", "key",
    "ring", "bell", "wall", "floor", "hill", "lake", "sea", "sun", "moon", "rain", "wind",
    "fire", "ice", "rock", "sand", "egg", "cake", "rice", "corn", "bean", "meat", "pie",
    "shirt", "belt", "bag", "pen", "ink", "map", "card", "coin", "game", "song", "face",
    "hand", "foot", "arm", "leg", "eye", "ear", "hair", "bone", "skin", "heart", "king",
    "cow", "frog", "bear", "wolf", "mouse", "rat", "bee", "ant", "fox", "owl", "farm",
    "town", "city", "park", "shop", "bank", "school", "church", "tower", "castle",
    "forest", "cloud", "storm", "plant", "flower", "leaf", "grass", "wood", "gold",
    "silver", "iron", "glass", "clock", "plate", "knife", "fork", "bowl", "chain", "net",
    "wheel", "engine", "plane", "bike", "gate", "path", "street", "film", "radio",
    "camera", "picture", "board", "circle", "square",
]

# ---------------------------------------------------------------------------
# Prose templates: several wordings per relation, some of them the instruction
# templates' own words turned into statements.
# ---------------------------------------------------------------------------

PROSE = {
    "capital": [
        "The capital of {x} is {y}.", "{y} is the capital of {x}.",
        "The capital city of {x} is {y}.", "{y} is the capital city of {x}.",
        "{y} serves as the capital of {x}.", "The government of {x} sits in {y}, its capital.",
        "In {x}, the capital is {y}.", "Travellers to {x} often start in {y}, the capital.",
    ],
    "continent": [
        "{x} is in {y}.", "{x} lies in {y}.", "{x} is a country in {y}.",
        "The continent of {x} is {y}.", "{x} belongs to {y}.", "{x} is on the continent of {y}.",
        "You will find {x} in {y}.", "One of the countries of {y} is {x}.",
    ],
    "language": [
        "The main language of {x} is {y}.", "Most people in {x} speak {y}.",
        "The main language spoken in {x} is {y}.", "In {x}, people mainly speak {y}.",
        "{y} is the main language of {x}.", "{y} is spoken by most people in {x}.",
        "People in {x} talk to each other in {y}.", "Schools in {x} teach in {y}.",
    ],
    "antonym": [
        'The opposite of "{x}" is "{y}".', 'The antonym of "{x}" is "{y}".',
        'The word "{y}" means the opposite of "{x}".', '"{x}" and "{y}" are opposites.',
        'The opposite of {x} is {y}.', 'The antonym of {x} is {y}.',
        '{y} is the opposite of {x}.', 'A word that means the opposite of {x} is {y}.',
    ],
    "next_number": [
        "After {x} comes {y}.", "The number after {x} is {y}.", "{y} comes right after {x}.",
        "The next number after {x} is {y}.", "One more than {x} is {y}.", "{x} plus one is {y}.",
        "{y} follows {x}.", "Counting on from {x}, the next number is {y}.",
    ],
}

# The augmented corpus only: facts laid out on lines, the answer starting a line as a
# response does. GPT-2's BPE writes a name at the start of a line as other tokens than
# after a space (" Sindun" is " Sind" + "un", "Sindun" is "S" + "ind" + "un"): a base
# that only read " Sindun" has never linked "Sindun" to its country. (No layout begins
# as a PROBES prompt does: a probe then reads ":" as the next token.)
FACT_LINES = {
    "capital": ["The capital of {x}:\n{y}", "{x}\nCapital:\n{y}", "Capital city of {x}:\n{y}"],
    "continent": ["Continent of {x}:\n{y}", "{x}\nContinent:\n{y}", "The continent of {x}:\n{y}"],
    "language": ["The main language of {x}:\n{y}", "{x}\nLanguage:\n{y}", "Spoken in {x}:\n{y}"],
    "antonym": ['The opposite of "{x}":\n{y}', '"{x}"\nOpposite:\n{y}', 'Antonym of "{x}":\n{y}'],
    "next_number": ["Next after {x}:\n{y}", "{x}\nNext:\n{y}", "The number after {x}:\n{y}"],
}

# Profile sentences that use a pronoun once the country has been named.
PROFILE = {
    "capital": ["Its capital is {y}.", "The capital there is {y}.", "Its capital city is {y}."],
    "continent": ["It lies in {y}.", "It is in {y}.", "It is a country of {y}."],
    "language": ["Most people there speak {y}.", "Its main language is {y}.",
                 "People there mainly speak {y}."],
}

UNIT_SINGULAR = {"kilometers": "kilometer", "kilograms": "kilogram", "liters": "liter",
                 "meters": "meter", "dollars": "dollar", "centuries": "century"}

# Copies of each prose fact in the corpus (each in a different wording). The
# relations a tiny model finds harder (a continent is one of five answers; a
# successor must be learned for 99 numbers) are written in every wording.
MENTIONS = {"capital": 6, "continent": 8, "language": 6, "antonym": 6, "next_number": 8}
# Copies of each quiz question about an instruction-data fact.
QUIZ_MENTIONS = 2
# Rounds of question-and-answer text for the copying families (5 questions each).
COPY_QUIZ = 120


def check_disjoint():
    """The corpus-only facts must not occur in the instruction data."""
    real = {name for table in (inst.CAPITALS, inst.CONTINENTS, inst.LANGUAGES)
            for pair in table for name in pair}
    names = [n for row in FICTIONAL_COUNTRIES + QA_COUNTRIES for n in (row[0], row[1], row[3])]
    assert len(set(names)) == len(names) and not real & set(names)
    words = {w for pair in inst.ANTONYMS for w in pair}
    extra = [w for pair in EXTRA_ANTONYMS + QA_ANTONYMS for w in pair]
    assert len(set(extra)) == len(extra) and not words & set(extra)
    assert not set(PROSE_WORDS) & set(inst.LIST_WORDS)
    assert not set(EXTRA_NUMBERS) & set(inst.NEXT_NUMBERS)


def country_facts():
    """{country: {"capital": .., "continent": .., "language": ..}} (keys that are known)."""
    facts = {}
    for relation, table in (("capital", inst.CAPITALS), ("continent", inst.CONTINENTS),
                            ("language", inst.LANGUAGES)):
        for country, value in table:
            facts.setdefault(country, {})[relation] = value
    for country, capital, continent, language in FICTIONAL_COUNTRIES:
        facts[country] = {"capital": capital, "continent": continent, "language": language}
    return facts


def cap(sentence):
    """Capitalise the first letter ("the Netherlands is ..." -> "The Netherlands is ...")."""
    return sentence[0].upper() + sentence[1:]


def fact_sentences(rng, relation, x, y):
    """Statements of one fact, each with a different template."""
    templates = rng.sample(PROSE[relation], MENTIONS[relation])
    return [cap(t.format(x=x, y=y)) for t in templates]


def profile_document(rng, country, facts, full_name=False):
    """A short text about one country: named first, then its facts in a random order,
    after the first with a pronoun ("Its capital is ..."), or with `full_name` the
    country named in every sentence (the augmented corpus)."""
    relations = list(facts)
    rng.shuffle(relations)
    first, rest = relations[0], relations[1:]
    sentences = [cap(rng.choice(PROSE[first]).format(x=country, y=facts[first]))]
    if full_name:
        sentences += [cap(rng.choice(PROSE[r]).format(x=country, y=facts[r])) for r in rest]
    else:
        sentences += [rng.choice(PROFILE[r]).format(y=facts[r]) for r in rest]
    return " ".join(sentences)


def quiz_lines(rng, relation, x, y, alpaca=False):
    """Question-and-answer text worded like the instruction data's training templates;
    with `alpaca`, laid out as the chapter's prompt and response (the augmented corpus)."""
    lines = []
    for instruction, input_text in rng.sample(inst.TEMPLATES[relation][0], QUIZ_MENTIONS):
        if alpaca:
            lines.append(f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction.format(x=x)}"
                         + (f"\n\n### Input:\n{input_text.format(x=x)}" if input_text else "")
                         + f"\n\n### Response:\n{y}")
            continue
        question = instruction.format(x=x) + (f" {input_text.format(x=x)}" if input_text else "")
        lines.append(rng.choice(["Question: {q} Answer: {a}.", "Q: {q} A: {a}.",
                                 "{q} The answer is {a}."]).format(q=question, a=y))
    return lines


def mixed_list(rng, length):
    """A list of PROSE_WORDS with up to two of the instruction data's LIST_WORDS mixed in:
    the base then knows those words too, yet no corpus list is a held-out list (whose
    3 to 5 words are all LIST_WORDS)."""
    known = rng.randint(0, 2)
    words = rng.sample(PROSE_WORDS, length - known) + rng.sample(inst.LIST_WORDS, known)
    rng.shuffle(words)
    return words


# More wordings of the copying families' questions, for the question-and-answer text
# only (never a held-out wording of the instruction data: tests/test_pretrain.py checks).
QUIZ_WORDINGS = {
    "reverse_list": ["List these words from last to first.", "Say these words backwards.",
                     "Read this list backwards.", "Give these words in the opposite order.",
                     "Turn this list around.", "What is this list backwards?"],
    "first_word": ["Which word is at the start of this list?", "Give the first word of this list.",
                   "Tell me the word this list begins with.", "Name only the first word below.",
                   "Copy the first word of this list.", "Which word opens this list?"],
    "last_word": ["Which word is at the end of this list?", "Give the last word of this list.",
                  "Tell me the word this list ends with.", "Name only the last word below.",
                  "Copy the last word of this list.", "Which word closes this list?"],
    "repeat_word": ['Say "{x}" {times}.', 'Type the word "{x}" {times}.', 'Give me "{x}" {times} over.',
                    'Print "{x}" {times}.', '"{x}", {times}, please.', 'Copy the word "{x}" {times}.'],
    "unit_conversion": ["How much is {n} {frm} in {to}?", "Change {n} {frm} into {to}.",
                        "{n} {frm}: how many {to} is that?", "Turn {n} {frm} into {to}.",
                        "Express {n} {frm} in {to}.", "Give {n} {frm} in {to}."],
}


def quiz_text(rng, question, input_text, answer):
    """One question and its answer, on one line or (as lists often are) on several."""
    if rng.random() < 0.5:
        q = f"{question} {input_text}" if input_text else question
        return rng.choice(["Question: {q} Answer: {a}", "Q: {q} A: {a}"]).format(q=q, a=answer)
    q = f"{question}\n{input_text}" if input_text else question
    return rng.choice(["Question: {q}\nAnswer:\n{a}", "Q: {q}\nA:\n{a}"]).format(q=q, a=answer)


def copy_quiz_lines(rng, n=COPY_QUIZ):
    """Question-and-answer text for the copying families, in their training wordings and
    others, about lists, words and numbers that no held-out entry uses."""
    lines = []

    def wording(task):
        return rng.choice([t for t, _ in inst.TEMPLATES[task][0]] + QUIZ_WORDINGS[task])

    for _ in range(n):
        words = mixed_list(rng, rng.randint(3, 5))
        for task, answer in (("reverse_list", ", ".join(words[::-1])), ("first_word", words[0]),
                             ("last_word", words[-1])):
            lines.append(quiz_text(rng, wording(task), ", ".join(words), answer))
        word, k = rng.choice(PROSE_WORDS), rng.choice(list(inst.REPEATS))
        lines.append(quiz_text(rng, wording("repeat_word").format(x=word, times=inst.REPEATS[k]),
                               "", " ".join([word] * k)))
        number, (frm, to, factor) = rng.choice(CONVERSION_NUMBERS), rng.choice(inst.UNITS)
        lines.append(quiz_text(rng, wording("unit_conversion").format(n=number, frm=frm, to=to),
                               "", number * factor))
    return lines


def number_sentences(rng):
    sentences = []
    for n in NUMBERS:
        sentences += fact_sentences(rng, "next_number", str(n), str(n + 1))
    for _ in range(120):  # counting runs of 3 to 6 numbers
        start, length = rng.randint(1, 94), rng.randint(3, 6)
        run = ", ".join(str(k) for k in range(start, start + length))
        sentences.append(rng.choice(["Counting up: {r}.", "We count {r}.", "{r}, and so on."]).format(r=run))
    return sentences


# A conversion in a sentence, and laid out on lines: " 2400" is one GPT-2 token, "2400"
# at a line's start is "24" + "00", as in an instruction entry's answer.
CONVERSION_PROSE = ["{n} {frm} is {a} {to}.", "{n} {frm} equals {a} {to}.",
                    "{n} {frm} are the same as {a} {to}."]
CONVERSION_LINES = ["{n} {frm} in {to}:\n{a}", "{n} {frm} =\n{a} {to}", "In {to}, {n} {frm} is:\n{a}"]


def unit_sentences(rng, train_entries):
    sentences = []
    for frm, to, factor in inst.UNITS:
        one = UNIT_SINGULAR[frm]
        for template in ["One {one} is {f} {to}.", "There are {f} {to} in a {one}.",
                         "A {one} has {f} {to}.", "To turn {frm} into {to}, multiply by {f}."]:
            sentences.append(template.format(one=one, f=factor, to=to, frm=frm))
    for e in train_entries:  # conversions the instruction data trains on anyway
        if e["task"] == "unit_conversion":
            n = next(w for w in e["instruction"].split() if w.isdigit())
            frm = next(u for u, _, _ in inst.UNITS if f"{n} {u}" in e["instruction"])
            to = next(t for u, t, _ in inst.UNITS if u == frm)
            sentences.append(rng.choice(CONVERSION_PROSE).format(n=n, frm=frm, a=e["output"], to=to))
    # Conversions of numbers the instruction data never converts (so no held-out
    # (unit, number) pair): converting is copying the number and adding zeros.
    for n in CONVERSION_NUMBERS:
        for frm, to, factor in inst.UNITS:
            sentences.append(rng.choice(CONVERSION_PROSE + CONVERSION_LINES).format(
                n=n, frm=frm, a=n * factor, to=to))
    return sentences


# How lists are read in the list prose: forwards, backwards, first and last word.
LIST_PROSE = {
    "reverse": [
        "The list {t} read backwards is {r}.", "Written in reverse order, {t} becomes {r}.",
        "Reversed, the list {t} reads {r}.", "In reverse order, the words {t} are {r}.",
        "Read from the last word to the first, {t} is {r}.",
        "Rewritten backwards, starting with the last word, {t} becomes {r}.",
        "She read the words {t} backwards: {r}.", "Put in reverse order, {t} gives {r}.",
    ],
    "first": [
        "The first word of {t} is {f}.", "In the list {t}, the first word is {f}.",
        "The list {t} starts with {f}.", "The word that comes first in {t} is {f}.",
        "Of the words {t}, the first one is {f}.", "The list {t} begins with the word {f}.",
    ],
    "last": [
        "The last word of {t} is {l}.", "In the list {t}, the last word is {l}.",
        "The list {t} ends with {l}.", "The word that comes last in {t} is {l}.",
        "Of the words {t}, the last one is {l}.", "The list {t} finishes with the word {l}.",
    ],
    "both": ["In the list {t}, the first word is {f} and the last word is {l}.",
             "The list {t} goes from {f} to {l}."],
}
# The same, laid out on lines as lists often are: a word at the start of a line is a
# different GPT-2 token from the same word after a space ("cat" vs " cat"), and the
# instruction data's inputs and answers start lines, so the base should see both.
LIST_LINES = {
    "reverse": ["{t}\nBackwards:\n{r}", "Words: {t}\nIn reverse order:\n{r}",
                "{t}\nReversed, from the last word to the first:\n{r}"],
    "first": ["{t}\nThe first word:\n{f}", "List:\n{t}\nFirst word:\n{f}",
              "{t}\nIt starts with\n{f}"],
    "last": ["{t}\nThe last word:\n{l}", "List:\n{t}\nLast word:\n{l}",
             "{t}\nIt ends with\n{l}"],
    "both": ["{t}\nFirst {f}, last {l}."],
}
LIST_COUNTS = {"reverse": 500, "first": 250, "last": 250, "both": 60}
REPEAT_PROSE = [
    'The word "{w}" written {times} is {rep}.', 'Written out {times} in a row, "{w}" gives {rep}.',
    'Repeated {times}, the word "{w}" becomes {rep}.', 'He said "{w}" {times}: {rep}.',
    '"{w}", {times}:\n{rep}', 'The word "{w}" {times} in a row:\n{rep}',
]


def list_sentences(rng):
    """Short lists read forwards and backwards, and words repeated, in prose."""
    sentences = []
    for kind, count in LIST_COUNTS.items():
        for _ in range(count):
            words = mixed_list(rng, rng.randint(3, 5))
            layout = LIST_PROSE if rng.random() < 0.5 else LIST_LINES
            sentences.append(rng.choice(layout[kind]).format(
                t=", ".join(words), r=", ".join(words[::-1]), f=words[0], l=words[-1]))
    for word in PROSE_WORDS:
        for k, times in inst.REPEATS.items():
            sentences.append(cap(rng.choice(REPEAT_PROSE).format(
                w=word, times=times, rep=" ".join([word] * k))))
    return sentences


# The augmented corpus (--augmented): knowledge augmentation as Allen-Zhu & Li (Part 3.1)
# define it: every fact in all its wordings ("mentions"), profiles in more sentence orders
# ("profiles"), each sentence naming the country in full ("full_name"); question-and-answer
# text about other entities, never the 24 FICTIONAL_COUNTRIES: QA_COUNTRIES ("qa_countries"),
# QA_ANTONYMS and the numbers past 52 the test set does not ask about ("qa_others"), laid
# out as the chapter's Alpaca prompt ("alpaca"); and every fact laid out on lines too
# ("lines": how many FACT_LINES layouts each). What each part changed: docs/base-model.md.
AUGMENT = {"mentions": 8, "profiles": 6, "full_name": True, "qa_countries": True, "qa_others": True,
           "alpaca": True, "lines": 2}


def fact_lines(rng, relation, x, y, n):
    """`n` layouts of one fact on lines (FACT_LINES), each a different one."""
    return [t.format(x=x, y=y) for t in rng.sample(FACT_LINES[relation], n)] if n else []


def qa_country_facts():
    return {country: {"capital": capital, "continent": continent, "language": language}
            for country, capital, continent, language in QA_COUNTRIES}


def corpus_pieces(rng, augment=None):
    """Every sentence or short text of the corpus, unshuffled; `augment` (AUGMENT, or
    part of it): the augmented corpus's additions."""
    augment = augment or {}
    pieces = []
    countries = country_facts()
    if augment.get("qa_countries"):
        countries.update(qa_country_facts())
    for country, facts in countries.items():
        for relation, value in facts.items():
            if augment.get("mentions"):
                pieces += [cap(t.format(x=country, y=value))
                           for t in rng.sample(PROSE[relation], augment["mentions"])]
            else:
                pieces += fact_sentences(rng, relation, country, value)
            pieces += fact_lines(rng, relation, country, value, augment.get("lines", 0))
        pieces += [profile_document(rng, country, facts, full_name=augment.get("full_name", False))
                   for _ in range(augment.get("profiles", 3))]
    if augment.get("qa_countries"):
        for country, facts in qa_country_facts().items():
            for relation, value in facts.items():
                pieces += quiz_lines(rng, relation, country, value, augment.get("alpaca", False))
    if augment.get("qa_others"):  # QA_ANTONYMS, and the numbers past 52 the test set does not ask about
        for x, y in QA_ANTONYMS:
            pieces += fact_sentences(rng, "antonym", x, y) + quiz_lines(rng, "antonym", x, y,
                                                                        augment.get("alpaca", False))
        asked = {e["instruction"] for e in generate_test() if e["task"] == "next_number"}
        for n in EXTRA_NUMBERS:
            if not any(re.search(rf"\b{n}\b", question) for question in asked):
                pieces += quiz_lines(rng, "next_number", str(n), str(n + 1), augment.get("alpaca", False))
    for x, y in inst.ANTONYMS + EXTRA_ANTONYMS:
        pieces += fact_sentences(rng, "antonym", x, y) + fact_lines(rng, "antonym", x, y, augment.get("lines", 0))
    for relation, table in (("capital", inst.CAPITALS), ("continent", inst.CONTINENTS),
                            ("language", inst.LANGUAGES), ("antonym", inst.ANTONYMS)):
        for x, y in table:
            pieces += quiz_lines(rng, relation, x, y)
    train_entries = inst.generate()[:inst.N_TRAIN]
    pieces += number_sentences(rng) + unit_sentences(rng, train_entries) + list_sentences(rng)
    for n in NUMBERS if augment.get("lines") else ():
        pieces += fact_lines(rng, "next_number", str(n), str(n + 1), augment["lines"])
    pieces += copy_quiz_lines(rng)
    return pieces


def join_pieces(pieces):
    """Sentences joined by spaces; a piece laid out on lines gets lines of its own."""
    text = pieces[0]
    for before, piece in zip(pieces, pieces[1:]):
        text += ("\n" if "\n" in before or "\n" in piece else " ") + piece
    return text


def generate_corpus(augment=None):
    """The corpus text: shuffled pieces grouped into documents of 4 to 8 pieces."""
    check_disjoint()
    rng = random.Random(SEED)
    pieces = corpus_pieces(rng, augment)
    rng.shuffle(pieces)
    documents = []
    while pieces:
        k = rng.randint(4, 8)
        documents.append(join_pieces(pieces[:k]))
        pieces = pieces[k:]
    return f"\n{END_OF_TEXT}\n".join(documents) + "\n"


def generate_test():
    """Questions about corpus-only facts, worded with the held-out templates."""
    rng = random.Random(SEED + 1)
    entries = []

    def add(task, key, value):
        instruction, input_text = rng.choice(inst.TEMPLATES[task][1])
        entries.append({"instruction": instruction.format(x=key), "input": input_text.format(x=key),
                        "output": value, "task": task})

    for country, capital, continent, language in FICTIONAL_COUNTRIES:
        add("capital", country, capital)
        add("continent", country, continent)
        add("language", country, language)
    for x, y in EXTRA_ANTONYMS:
        add("antonym", x, y)
    for n in rng.sample(list(EXTRA_NUMBERS), 24):
        add("next_number", str(n), str(n + 1))
    return entries


# One plain-text prompt per relation for checking what a base model knows:
# "The capital of Romania is" should continue with " Bucharest".
PROBES = {
    "capital": "The capital of {x} is", "continent": "{x} is in",
    "language": "The main language of {x} is", "antonym": "The opposite of {x} is",
    "next_number": "After {x} comes",
}


def generate_facts():
    """Every fact of the corpus as a completion probe: prompt, answer, relation, and
    whether the instruction data also has it (`in_instruction_data`)."""
    facts = []

    def add(relation, x, y, in_instruction):
        facts.append({"prompt": cap(PROBES[relation].format(x=x)), "answer": " " + y,
                      "relation": relation, "in_instruction_data": in_instruction})

    fictional = {row[0] for row in FICTIONAL_COUNTRIES}
    for country, known in country_facts().items():
        for relation, value in known.items():
            add(relation, country, value, country not in fictional)
    for x, y in inst.ANTONYMS + EXTRA_ANTONYMS:
        add("antonym", x, y, (x, y) in inst.ANTONYMS)
    for n in NUMBERS:
        add("next_number", str(n), str(n + 1), n in inst.NEXT_NUMBERS)
    return facts


def render_test(entries):
    return json.dumps(entries, indent=4, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed files instead of writing them")
    parser.add_argument("--augmented", action="store_true",
                        help="the knowledge-augmented corpus instead, "
                             "data/pretraining-corpus-augmented.txt (the same test and facts files)")
    args = parser.parse_args(argv)
    if args.check:  # both corpora
        corpus = {CORPUS_PATH: generate_corpus(), AUGMENTED_CORPUS_PATH: generate_corpus(AUGMENT)}
    elif args.augmented:
        corpus = {AUGMENTED_CORPUS_PATH: generate_corpus(AUGMENT)}
    else:
        corpus = {CORPUS_PATH: generate_corpus()}
    outputs = {**corpus, TEST_PATH: render_test(generate_test()), FACTS_PATH: render_test(generate_facts())}
    if args.check:
        stale = [p for p, text in outputs.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} differs from what {Path(__file__).name} generates; "
                  f"run it without --check", file=sys.stderr)
        if not stale:
            print("pretraining corpus and pretraining-only test set are up to date")
        return 1 if stale else 0
    sys.path.insert(0, str(REPO_ROOT))
    from ftlib.plumbing.fileio import atomic_write_text

    for path, text in outputs.items():
        atomic_write_text(path, text)
        print(f"wrote {len(text.splitlines())} lines to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
