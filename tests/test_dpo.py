"""DPO (ftlib/training/dpo.py): the loss by hand, log-probabilities, masking as in fine-tuning,
the frozen reference, the bundled preference data, and `python -m ftlib dpo`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ftlib.cli import main
from ftlib.data.collate import instruction_collate_fn
from ftlib.data.instructions import BUNDLED_DATA_PATH, InstructionDataset, load_instruction_data
from ftlib.training.dpo import (SENTENCE_END, PREFERENCE_DATA_PATH, PreferenceDataset, answer_in, dpo_batch, dpo_loss,
                       dpo_stats, frozen_reference, is_full_sentence, load_preference_data,
                       make_preference_pair, preference_collate_fn, preference_loaders,
                       preference_scores, sequence_logprobs, train_dpo)
from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.model.gpt import GPTModel
from ftlib.data.tokenizer import get_gpt2_tokenizer
from helpers import quick_args, toy_items

TINY = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": False}


def test_dpo_loss_matches_a_hand_computed_value():
    # rewards: chosen 0.5 * (-1 - -2) = 0.5, rejected 0.5 * (-3 - -2) = -0.5, margin 1
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
                                      torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))  # -log sigmoid(1) = 0.3133
    # equal policy and reference: every reward is 0 and the loss is log 2
    same = torch.tensor([-4.0, -7.0])
    loss, _, _ = dpo_loss(same, same, same, same)
    assert loss.item() == pytest.approx(math.log(2))
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(same, same, same, same, beta=0)


def test_sequence_logprobs_sum_the_response_tokens_only():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    items = toy_items(3, seed=1)
    inputs, targets = instruction_collate_fn(items)
    got = sequence_logprobs(model, inputs, targets)
    with torch.no_grad():
        logits = model(inputs)  # every position, as the book computes them
    for row in range(3):
        expected = -F.cross_entropy(logits[row], targets[row], reduction="sum")
        assert got[row].item() == pytest.approx(expected.item(), rel=1e-5)
        # only the response and one end-of-text: prompt length and padding do not count
        ids, prompt_length = items[row]
        assert int((targets[row] != -100).sum()) == len(ids) - prompt_length + 1


def test_preference_batches_are_masked_exactly_as_fine_tuning_batches():
    tokenizer = get_gpt2_tokenizer()
    entries = [make_preference_pair(e) for e in load_instruction_data(BUNDLED_DATA_PATH)[:5]]
    pairs = PreferenceDataset(entries, tokenizer)
    batch = [pairs[i] for i in range(5)]
    inputs, targets = preference_collate_fn(batch)
    assert inputs.shape[0] == 10
    # the rejected response is the bare output: the same items InstructionDataset makes
    sft = InstructionDataset(entries, tokenizer).with_prompt_lengths()
    assert [rejected for _, rejected in batch] == [sft[i] for i in range(5)]
    expected = instruction_collate_fn([c for c, _ in batch] + [r for _, r in batch])
    assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    chosen_text = tokenizer.decode([t for t in targets[0].tolist() if t != -100])
    # as in fine-tuning, the targets are the response part and one end-of-text
    assert chosen_text == "\n\n### Response:\n" + entries[0]["output"] + SENTENCE_END + "<|endoftext|>"


def test_training_moves_the_policy_and_leaves_the_reference_unchanged(one_thread):
    torch.manual_seed(0)
    policy = GPTModel(TINY)
    reference = frozen_reference(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    prompts = toy_items(16, seed=2)
    # chosen: the response ends in 7s; rejected: the same prompt, the response ends in 8s
    pairs = [((ids + [7, 7], n), (ids + [8, 8], n)) for ids, n in prompts]
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=preference_collate_fn)
    start = dpo_stats(policy, reference, loader, "cpu", beta=0.5)
    assert start["loss"] == pytest.approx(math.log(2), abs=1e-5) and start["margin"] == 0
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    history = train_dpo(policy, reference, loader, loader, optimizer, "cpu", 3, beta=0.5,
                        eval_freq=4, eval_iter=2, progress=False, log=None)
    end = dpo_stats(policy, reference, loader, "cpu", beta=0.5)
    assert end["loss"] < 0.3 and end["accuracy"] == 1.0 and end["margin"] > 1
    assert history.steps == [0, 4, 8, 12] and len(history.series("val", "margin")) == 4
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    assert not any(p.requires_grad for p in reference.parameters())


def test_bundled_preference_data_is_the_generators_output():
    entries = load_instruction_data(BUNDLED_DATA_PATH)
    assert load_preference_data(PREFERENCE_DATA_PATH) == [make_preference_pair(e) for e in entries]


def test_full_sentence_answers_are_scored_by_property_and_by_answer():
    entries = [{"output": "Oslo", "model_response": "Oslo is the answer."},
               {"output": "Oslo", "model_response": "Oslo"},
               {"output": "Oslo", "model_response": "Bergen is the answer."},
               {"output": "Oslo", "model_response": "Oslo is the answer"},   # no period
               {"output": "Oslo", "model_response": " is the answer."}]      # no answer
    assert is_full_sentence(entries[0]["model_response"]) and answer_in(entries[0]["model_response"]) == "Oslo"
    assert [is_full_sentence(e["model_response"]) for e in entries] == [True, False, True, False, False]
    scores = preference_scores(entries)
    assert scores == {"full_sentence": 0.4, "answer_exact_match": 0.4, "n": 5}


@pytest.mark.parametrize("change, message", [
    ({"chosen": None}, "entry 1: field 'chosen' must be a non-empty string (found missing)"),
    ({"rejected": 3}, "entry 1: field 'rejected' must be a non-empty string (found int 3)"),
    ({"rejected": "Oslo is the answer."}, "entry 1: 'chosen' and 'rejected' are the same"),
])
def test_malformed_preference_files_name_the_file_and_the_entry(tmp_path, change, message):
    good = make_preference_pair({"instruction": "Capital of Norway?", "input": "", "output": "Oslo"})
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([good, bad]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_preference_data(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_dpo_command_tunes_a_run_and_writes_its_folder(small_data, tmp_path, capsys):
    sft = tmp_path / "sft"
    assert main(quick_args(small_data, sft, "--max-steps", "2")) == 0
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([make_preference_pair(e) for e in json.loads(small_data.read_text())]))
    out = tmp_path / "dpo"
    assert main(["dpo", "--run", str(sft), "--out", str(out), "--data", str(pairs), "--batch-size", "8",
                 "--max-new-tokens", "3", "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.json", "model.pth", "ftlib-run.json",
                                                "test-responses.json", "dpo-plot.png", "history.jsonl"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 7 and metrics["after"]["n"] == 6  # 51 pairs in batches of 8
    assert set(metrics["goals"]) >= {"met", "full_sentence_at_least"}
    config = json.loads((out / "config.json").read_text())
    assert config["dpo"]["run"] == str(sft) and "model_config" in config
    assert "Full-sentence answers on 6 held-out prompts" in capsys.readouterr().out


def test_dpo_command_bad_inputs_are_one_line(tmp_path, small_data, capsys):
    out = tmp_path / "dpo"
    assert main(["dpo", "--run", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run") and "make finetune" in err and err.count("\n") == 1
    assert main(["dpo", "--run", str(tmp_path), "--out", str(out), "--beta", "-1"]) == 2
    assert "--beta must be a positive, finite number" in capsys.readouterr().err
    assert not out.exists()


def test_preference_loaders_shuffle_by_seed():
    tokenizer = get_gpt2_tokenizer()
    entries = [make_preference_pair(e) for e in load_instruction_data(BUNDLED_DATA_PATH)[:12]]
    first = [b[0].tolist() for b in preference_loaders(entries, entries, tokenizer, 4, seed=1)[0]]
    again = [b[0].tolist() for b in preference_loaders(entries, entries, tokenizer, 4, seed=1)[0]]
    other = [b[0].tolist() for b in preference_loaders(entries, entries, tokenizer, 4, seed=2)[0]]
    assert first == again and first != other


def test_nll_weight_adds_the_chosen_responses_mean_token_loss():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    reference = frozen_reference(model)
    items = toy_items(4, seed=3)
    batch = [((ids + [7], n), (ids + [8], n)) for ids, n in items[:2]]
    inputs, targets = preference_collate_fn(batch)
    pure = dpo_batch(model, reference, (inputs, targets), "cpu", beta=0.1)
    mixed = dpo_batch(model, reference, (inputs, targets), "cpu", beta=0.1, nll_weight=0.5)
    with torch.no_grad():
        chosen_loss = model(inputs[:2], targets[:2])  # fine-tuning's loss: the mean over targets
    assert mixed["loss"].item() == pytest.approx(pure["loss"].item() + 0.5 * chosen_loss.item(), rel=1e-5)
