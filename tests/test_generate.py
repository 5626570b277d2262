"""Text <-> ids and `generate`: the chapter's behaviour, with and without the KV cache."""

import pytest
import torch

from ftlib.model.generate import generate, generate_and_print_sample, text_to_token_ids, token_ids_to_text
from ftlib.model.gpt import GPTModel
from ftlib.data.tokenizer import get_gpt2_tokenizer

# Small and fast; a short context so that generation runs past it.
CFG = {
    "vocab_size": 97, "context_length": 12, "emb_dim": 32, "n_heads": 2,
    "n_layers": 2, "drop_rate": 0.0, "qkv_bias": True,
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(123)
    m = GPTModel(CFG).eval()
    with torch.no_grad():
        # Larger weights than GPT-2's init give varied, well-separated greedy picks
        # (the smallest top-1/top-2 gap seen is ~3e-3, float rounding is ~1e-6), so
        # the cached and uncached computations cannot flip a pick by rounding.
        for name, p in m.named_parameters():
            if name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 1.0 if "emb" in name else 0.2)
    return m


def book_generate(model, idx, max_new_tokens, context_size):
    """The chapter's greedy loop, written out: crop, run the whole window, argmax."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]
        idx = torch.cat((idx, logits.argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def prompt(n, batch=1, seed=0):
    return torch.randint(0, CFG["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


# --- text <-> ids -----------------------------------------------------------------

def test_text_to_token_ids_and_back():
    tokenizer = get_gpt2_tokenizer()
    ids = text_to_token_ids("Every effort moves you", tokenizer)
    assert ids.tolist() == [[6109, 3626, 6100, 345]]  # the book's example
    assert token_ids_to_text(ids, tokenizer) == "Every effort moves you"
    assert text_to_token_ids("Hi<|endoftext|>", tokenizer)[0, -1].item() == 50256


# --- greedy: cache on == cache off == the chapter's loop -------------------------

@pytest.mark.parametrize(
    "prompt_len, new_tokens",
    [
        (3, 5),    # stays inside the context
        (3, 9),    # ends exactly at the context length (12)
        (5, 20),   # runs past the context: the window slides
        (20, 6),   # the prompt alone is longer than the context
        (1, 1),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_with_cache_equals_without_and_the_chapters_loop(model, prompt_len, new_tokens, batch):
    idx = prompt(prompt_len, batch)
    expected = book_generate(model, idx, new_tokens, CFG["context_length"])
    uncached = generate(model, idx, new_tokens, CFG["context_length"], use_cache=False)
    cached = generate(model, idx, new_tokens, CFG["context_length"], use_cache=True)
    assert cached.shape == (batch, prompt_len + new_tokens)
    assert torch.equal(uncached, expected)
    assert torch.equal(cached, expected)


def test_smaller_context_size_than_the_model_is_respected(model):
    idx = prompt(4)
    expected = book_generate(model, idx, 10, context_size=6)
    assert torch.equal(generate(model, idx, 10, context_size=6), expected)


def tokens_fed_per_step(model, prompt_length, new_tokens):
    """How many token positions each forward pass of `generate` feeds the model."""
    seen = []
    handle = model.tok_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        generate(model, prompt(prompt_length), new_tokens, CFG["context_length"])
    finally:
        handle.remove()
    return seen


def test_cache_feeds_one_token_per_step_inside_the_context(model):
    # prefill the prompt, then one token per step
    assert tokens_fed_per_step(model, 4, 6) == [4, 1, 1, 1, 1, 1]


def test_past_the_context_each_step_reruns_the_window(model):
    # prompt 10; tokens 11 and 12 fit in the cache; from the 13th the window slides
    assert tokens_fed_per_step(model, 10, 5) == [10, 1, 1, 12, 12]


def test_zero_new_tokens_returns_the_prompt(model):
    idx = prompt(3)
    assert torch.equal(generate(model, idx, 0, CFG["context_length"]), idx)


# --- sampling, top-k, end token ---------------------------------------------------

def test_top_k_1_samples_the_greedy_token_for_each_row(model):
    idx = prompt(3, batch=2)
    greedy = generate(model, idx, 8, CFG["context_length"])
    torch.manual_seed(0)
    sampled = generate(model, idx, 8, CFG["context_length"], temperature=1.5, top_k=1)
    assert torch.equal(sampled, greedy)


def test_sampling_is_repeatable_with_a_seed_and_stays_in_the_top_k(model):
    idx = prompt(3)
    runs = []
    for _ in range(2):
        torch.manual_seed(42)
        runs.append(generate(model, idx, 10, CFG["context_length"], temperature=1.0, top_k=3))
    assert torch.equal(runs[0], runs[1])

    out = runs[0]
    for i in range(3, out.shape[1]):  # each sampled token was among the 3 most likely
        with torch.no_grad():
            logits = model(out[:, max(0, i - CFG["context_length"]):i])[0, -1]
        assert out[0, i] in logits.topk(3).indices


def test_sampling_with_and_without_cache_agree_for_the_same_seed(model):
    idx = prompt(3)
    torch.manual_seed(7)
    cached = generate(model, idx, 15, CFG["context_length"], temperature=0.8, top_k=10)
    torch.manual_seed(7)
    uncached = generate(model, idx, 15, CFG["context_length"], temperature=0.8, top_k=10, use_cache=False)
    assert torch.equal(cached, uncached)


def test_stops_at_eos_without_appending_it(model):
    idx = prompt(3)
    free = generate(model, idx, 8, CFG["context_length"])[0, 3:].tolist()
    eos = free[3]
    stop = free.index(eos)  # the first time eos would be produced
    out = generate(model, idx, 8, CFG["context_length"], eos_id=eos)
    assert out[0, 3:].tolist() == free[:stop]


def test_batch_rows_that_end_are_padded_with_eos_until_all_end(model):
    idx = prompt(3, batch=3, seed=10)
    free = generate(model, idx, 10, CFG["context_length"])[:, 3:].tolist()
    eos = free[0][3]  # row 0's fourth token plays the end token in this test
    assert eos in free[1] and eos not in free[2]  # rows end at different steps, or never

    # Each row alone: its tokens up to its first eos (as the chapter, batch of one).
    alone = [generate(model, idx[r:r + 1], 10, CFG["context_length"], eos_id=eos)[0, 3:].tolist()
             for r in range(3)]
    assert alone[0] == free[0][:free[0].index(eos)]
    out = generate(model, idx, 10, CFG["context_length"], eos_id=eos)
    assert out.shape == (3, 3 + 10)  # row 2 never ends: all 10 steps run
    for r in range(3):
        assert out[r, 3:].tolist() == alone[r] + [eos] * (10 - len(alone[r]))


def test_batch_stops_when_every_row_has_ended(model):
    idx = prompt(3, batch=2, seed=3)
    free = generate(model, idx, 10, CFG["context_length"])[:, 3:].tolist()
    eos = free[0][2]
    first_end = [row.index(eos) if eos in row else None for row in free]
    assert None not in first_end and first_end[0] != first_end[1]
    out = generate(model, idx, 10, CFG["context_length"], eos_id=eos)
    # The step at which the last row ends is not appended.
    assert out.shape == (2, 3 + max(first_end))
    for r in range(2):
        assert out[r, 3:].tolist() == free[r][:first_end[r]] + [eos] * (max(first_end) - first_end[r])


def test_model_mode_is_kept_and_no_graph_is_built(model):
    model.train()
    try:
        out = generate(model, prompt(3), 4, CFG["context_length"])
        assert model.training
        assert not out.requires_grad
    finally:
        model.eval()


def test_generate_and_print_sample_prints_one_line_and_restores_mode(capsys):
    torch.manual_seed(0)
    m = GPTModel({**CFG, "vocab_size": 50257}).train()
    generate_and_print_sample(m, get_gpt2_tokenizer(), "cpu", "Every effort moves you", max_new_tokens=5)
    printed = capsys.readouterr().out
    assert printed.startswith("Every effort moves you")
    assert printed.count("\n") == 1
    assert m.training


def test_benchmark_quick_mode_runs_and_cache_changes_no_token():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick", "--reps", "1"])
    assert [row["new"] for row in rows] == [10, 50]
    assert all(row["same"] for row in rows)  # cache, no cache and the book's loop agree
