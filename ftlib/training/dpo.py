"""Preference tuning with DPO (Direct Preference Optimization), after instruction fine-tuning.

Supervised fine-tuning shows the model one good answer per instruction. Preference
tuning shows it two, a *chosen* and a *rejected* one, and moves it towards the first
and away from the second, relative to a frozen copy of where it started (the
*reference* model). DPO (Rafailov et al., 2023) does this with one loss on
log-probabilities, without a reward model or sampling:

    loss = -log sigmoid( beta * [(log pi(chosen) - log ref(chosen))
                                 - (log pi(rejected) - log ref(rejected))] )

where log pi(y) is the log-probability the model gives the whole response y after
the prompt: the sum over the response's tokens (prompt and padding masked, with the
same collate function as fine-tuning). `beta * (log pi(y) - log ref(y))` is y's
*implicit reward*; the loss asks the chosen response's reward to exceed the
rejected one's, and `beta` sets how far the model may move from the reference.

The bundled preference data (`data/preference-data.json`, made by
`scripts/make_preference_data.py`) pairs every instruction entry with a chosen
response that is a full sentence ("Bucharest is the answer.") and a rejected one
that is the bare answer ("Bucharest"), which is what instruction fine-tuning taught.
The property is seen at a glance and scored exactly (`is_full_sentence`), and the
answer inside the sentence is still checked by exact match (`answer_in`). The
sentence uses only words the base model met in pretraining ("The answer is North
America." is in its corpus): a model can only learn to prefer what it can say.

`preference_tune(DPOConfig(run=...))` is the job behind `python -m ftlib dpo`.
"""

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ftlib.config import DPOConfig  # noqa: F401 (the job's settings, also ftlib.training.dpo.DPOConfig)
from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn
from ftlib.data.instructions import BUNDLED_DATA_PATH, _check_style, format_input, format_response, load_instruction_data
from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.plumbing.fileio import json_number
from ftlib.data.tokenizer import END_OF_TEXT_ID

PREFERENCE_DATA_PATH = BUNDLED_DATA_PATH.parent / "preference-data.json"
SENTENCE_START, SENTENCE_END = "", " is the answer."


# --- the preference data -------------------------------------------------------------

def make_preference_pair(entry):
    """An instruction entry with a chosen (a full sentence) and a rejected (the bare
    answer) response:

    >>> make_preference_pair({"instruction": "Capital of Romania?", "input": "", "output": "Bucharest"})
    {..., 'chosen': 'Bucharest is the answer.', 'rejected': 'Bucharest'}

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    return {**entry, "chosen": SENTENCE_START + entry["output"] + SENTENCE_END, "rejected": entry["output"]}


def is_full_sentence(response):
    """True if a response has the preferred property: "The answer is ... ."

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    return (response.startswith(SENTENCE_START) and response.endswith(SENTENCE_END)
            and len(response) > len(SENTENCE_START) + len(SENTENCE_END))


def answer_in(response):
    """The answer inside a response: the words between "The answer is " and the final
    period of a full sentence, or the whole response otherwise.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    if is_full_sentence(response):
        return response[len(SENTENCE_START):-len(SENTENCE_END)]
    return response


def load_preference_data(path=PREFERENCE_DATA_PATH, skip_unusable=False, log=print, check=None):
    """Entries of a preference file: the chapter's fields plus string `chosen` and
    `rejected` (the book's layout), or TRL's `prompt`, `chosen` and `rejected` (text or
    messages), read by `load_instruction_data(path, preference=True)`. DataError naming
    the file and the entry when one is malformed (a field missing or not a string, text
    that is not UTF-8).

    A pair that is well formed but cannot teach a preference (`unusable_pair_reason`:
    chosen and rejected the same text, or one of them empty; or the reason `check`,
    a function of the entry, gives) is refused the same way, unless `skip_unusable`:
    then it is left out, and `log` gets one line for them all:

        pairs.json: skipped 1 of 1100 pairs: chosen and rejected identical (entry 17)

    The chapter's own `instruction-data-with-preference.json` has one such pair.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    path = Path(path)
    entries = load_instruction_data(path, preference=True)  # the file, its shape, the text
    for i, entry in enumerate(entries):
        for key in ("chosen", "rejected"):
            value = entry.get(key)
            if not isinstance(value, str):
                found = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
                raise DataError(f"{path}: entry {i}: field {key!r} must be a non-empty string "
                                f"(found {found})")
    unusable = {}
    for i, entry in enumerate(entries):
        reason = unusable_pair_reason(entry) or (check(entry) if check else None)
        if reason:
            unusable[i] = reason
    if not unusable:
        return entries
    if not skip_unusable:
        i, reason = next(iter(unusable.items()))
        raise DataError(f"{path}: entry {i}: {UNUSABLE_PAIR_ERRORS.get(reason, reason)}")
    if len(unusable) == len(entries):
        raise DataError(f"{path}: none of its {len(entries)} pairs can teach a preference: "
                        f"{_count_by_reason(unusable)}")
    if log is not None:
        log(f"{path}: skipped {len(unusable)} of {len(entries)} pairs: {_count_by_reason(unusable)}")
    return [entry for i, entry in enumerate(entries) if i not in unusable]


# The reasons `unusable_pair_reason` gives, and the error when such a pair is refused.
UNUSABLE_PAIR_ERRORS = {
    "chosen and rejected identical": "'chosen' and 'rejected' are the same text; "
                                     "a pair must differ to teach a preference",
    "'chosen' empty": "field 'chosen' must be a non-empty string (found only whitespace)",
    "'rejected' empty": "field 'rejected' must be a non-empty string (found only whitespace)",
}


def unusable_pair_reason(entry):
    """Why a preference pair cannot teach a preference (a key of UNUSABLE_PAIR_ERRORS),
    or None when it can: its `chosen` and `rejected` must be different, non-empty text.

    Not in a notebook: the check under `load_preference_data`.
    """
    for key in ("chosen", "rejected"):
        if not entry[key].strip():
            return f"{key!r} empty"
    if entry["chosen"] == entry["rejected"]:
        return "chosen and rejected identical"
    return None


def pair_too_long(entry, tokenizer, context_length, style="alpaca"):
    """A `check` for `load_preference_data`: a reason when the pair's longer sequence
    (prompt and response, as `PreferenceDataset` makes it) has more tokens than the
    model has positions, which training could not run on; else None.

    Not in a notebook: what `preference_tune` checks before any work.
    """
    (chosen, _), (rejected, _) = PreferenceDataset([entry], tokenizer, style)[0]
    if max(len(chosen), len(rejected)) > context_length:
        return f"longer than the model's {context_length} positions"
    return None


def _count_by_reason(unusable, shown=5):
    """{entry index: reason} as "chosen and rejected identical (entries 3, 17); ..."."""
    by_reason = {}
    for i, reason in unusable.items():
        by_reason.setdefault(reason, []).append(i)
    parts = []
    for reason, indices in by_reason.items():
        if len(indices) == 1:
            parts.append(f"{reason} (entry {indices[0]})")
        else:
            listed = ", ".join(str(i) for i in indices[:shown]) + (", ..." if len(indices) > shown else "")
            parts.append(f"{reason} ({len(indices)} entries: {listed})")
    return "; ".join(parts)


class PreferenceDataset(Dataset):
    """Preference entries pre-tokenized; item i is `(chosen_item, rejected_item)`, each
    `(token_ids, prompt_length)` as `InstructionDataset.with_prompt_lengths()` gives:
    the same prompt, then `format_response` of the chosen or the rejected text.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """

    def __init__(self, entries, tokenizer, style="alpaca"):
        _check_style(style)
        self.entries = entries
        self.items = []
        for entry in entries:
            prompt = tokenizer.encode(format_input(entry, style), disallowed_special=())
            pair = []
            for key in ("chosen", "rejected"):
                response = tokenizer.encode(format_response({"output": entry[key]}, style),
                                            disallowed_special=())
                pair.append((prompt + response, len(prompt)))
            self.items.append(tuple(pair))

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self):
        return len(self.items)


def preference_collate_fn(batch, pad_token_id=END_OF_TEXT_ID, allowed_max_length=None, device="cpu"):
    """(inputs, targets) of shape (2b, t): b chosen rows, then the b rejected rows.

    Exactly `instruction_collate_fn` on the chosen items followed by the rejected
    ones: padding and prompt targets are -100, the first end-of-text stays a target.
    One batch lets the policy and the reference each score both halves in one pass.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    if len(batch) == 0:
        raise DataError("preference collate: the batch is empty")
    items = [chosen for chosen, _ in batch] + [rejected for _, rejected in batch]
    return instruction_collate_fn(items, pad_token_id, IGNORE_INDEX, allowed_max_length, device)


# --- the loss ------------------------------------------------------------------------

def sequence_logprobs(model, inputs, targets):
    """log p(response | prompt) of each row: the sum of log-probabilities of the targets
    that are not -100, shape (rows,). It is the fine-tuning loss, per token and negated:
    `model(inputs, targets)` runs the output head only at those targets.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    token_logprobs = -model(inputs, targets, reduction="none").float()  # (targets,), row by row
    rows = (targets != IGNORE_INDEX).nonzero()[:, 0]                     # the row of each target
    return torch.zeros(inputs.shape[0], device=inputs.device).index_add(0, rows, token_logprobs)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    """The DPO loss (mean over pairs) and each pair's implicit rewards.

    Each argument is a (pairs,) tensor of summed log-probabilities. Returns
    `(loss, chosen_rewards, rejected_rewards)`; a reward is `beta * (policy - reference)`,
    and `chosen_rewards - rejected_rewards` is the reward margin.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def frozen_reference(model):
    """A frozen copy of `model` (eval mode, no gradients): DPO's reference.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad = False
    return reference


def dpo_batch(policy, reference, batch, device, beta, nll_weight=0.0):
    """One batch through both models: a dict with the loss (with gradients to the
    policy) and, per pair, the rewards and the policy's log-probabilities.

    `nll_weight` adds that many times the chosen responses' mean token loss (the
    fine-tuning loss) to the DPO loss, so the chosen responses themselves become
    likelier, not only likelier than the rejected ones (Pang et al., 2024).

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    inputs, targets = (t.to(device) for t in batch)
    pairs = inputs.shape[0] // 2
    policy_logp = sequence_logprobs(policy, inputs, targets)
    with torch.no_grad():
        reference_logp = sequence_logprobs(reference, inputs, targets)
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy_logp[:pairs], policy_logp[pairs:], reference_logp[:pairs], reference_logp[pairs:], beta)
    if nll_weight:
        chosen_tokens = (targets[:pairs] != IGNORE_INDEX).sum()
        loss = loss + nll_weight * (-policy_logp[:pairs].sum() / chosen_tokens)
    return {"loss": loss, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
            "chosen_logp": policy_logp[:pairs].detach(), "rejected_logp": policy_logp[pairs:].detach()}


def dpo_stats(policy, reference, loader, device, beta, num_batches=None):
    """Means over `num_batches` batches of `loader` (all by default), without gradients:
    loss, reward margin, preference accuracy (the share of pairs whose chosen reward is
    above the rejected one's), and the policy's chosen and rejected log-probabilities.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    was_training = policy.training
    policy.eval()
    sums, pairs = dict.fromkeys(("loss", "margin", "accuracy", "chosen_logp", "rejected_logp"), 0.0), 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if num_batches is not None and i >= num_batches:
                    break
                out = dpo_batch(policy, reference, batch, device, beta)
                margin = out["chosen_rewards"] - out["rejected_rewards"]
                n = margin.shape[0]
                sums["loss"] += float(out["loss"]) * n
                sums["margin"] += float(margin.sum())
                sums["accuracy"] += float((margin > 0).sum())
                sums["chosen_logp"] += float(out["chosen_logp"].sum())
                sums["rejected_logp"] += float(out["rejected_logp"].sum())
                pairs += n
    finally:
        policy.train(was_training)
    if pairs == 0:
        raise DataError("dpo_stats: the loader gave no pairs")
    return {key: value / pairs for key, value in sums.items()}


# --- training ------------------------------------------------------------------------

@dataclass
class DPOHistory:
    """What `train_dpo` records at each evaluation (the step, then per-pair means on a
    few training batches and on the validation pairs).

    Not in a notebook: what `train_dpo` returns; notebook 09 plots its fields.
    """

    steps: list = field(default_factory=list)
    train: list = field(default_factory=list)   # dicts of `dpo_stats`
    val: list = field(default_factory=list)

    def series(self, split, key):
        """One statistic over the evaluations, e.g. `history.series("val", "margin")`."""
        return [stats[key] for stats in getattr(self, split)]


def train_dpo(policy, reference, train_loader, val_loader, optimizer, device, num_epochs, *,
              beta=0.1, nll_weight=0.0, eval_freq=5, eval_iter=4, scheduler=None, grad_clip=1.0,
              max_steps=None, progress=True, checkpoint_path=None, log=print,
              history_file=None, tensorboard_dir=None):
    """Train `policy` with the DPO loss against the frozen `reference`; a `DPOHistory`.

    The loop of `train_model` for pairs: the same optimizer, schedule
    (`warmup_cosine_schedule`), gradient clipping, progress bar and checkpoint file
    (`save_checkpoint`, written at the end; it is not resumable). Every `eval_freq`
    steps `dpo_stats` is recorded on `eval_iter` batches of each loader. `history_file`
    and `tensorboard_dir` as `train_model`'s (its `TrainingLog`): a line per evaluation,
    step (optimizer steps done), epoch, tokens_seen, lr and tokens_per_s as there, and
    each statistic of `dpo_stats` as train_NAME and val_NAME (val_margin, val_accuracy, ...).

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    from ftlib.model.files import save_checkpoint
    from ftlib.training.loop import TrainingDiverged, TrainingLog, _Throughput

    history = DPOHistory()
    training_log = TrainingLog(history_file, tensorboard_dir)
    total = len(train_loader) * num_epochs if max_steps is None else min(max_steps, len(train_loader) * num_epochs)
    bar = tqdm(total=total, desc="DPO", unit="step", disable=not progress, dynamic_ncols=True)
    counts = {"done": 0, "tokens": 0, "lr": optimizer.param_groups[0]["lr"]}  # steps done, input tokens
    throughput = _Throughput()

    def record(epoch):
        _record(history, counts, throughput, len(train_loader), policy, reference, train_loader,
                val_loader, device, beta, eval_iter, None if progress else log, epoch, training_log)

    policy.train()
    try:
        for epoch in range(num_epochs):
            for batch in itertools.islice(train_loader, total - counts["done"]):
                if counts["done"] % eval_freq == 0:
                    record(epoch)
                optimizer.zero_grad(set_to_none=True)
                counts["lr"] = optimizer.param_groups[0]["lr"]
                out = dpo_batch(policy, reference, batch, device, beta, nll_weight)
                if not torch.isfinite(out["loss"]):
                    raise TrainingDiverged(f"DPO loss is {float(out['loss'])} at step {counts['done']}; "
                                     "try a lower learning rate (--lr) or beta")
                out["loss"].backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                counts["done"] += 1
                counts["tokens"] += batch[0].numel()
                loss, margin = out["loss"].item(), (out["chosen_rewards"] - out["rejected_rewards"]).mean().item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", margin=f"{margin:.2f}", refresh=False)
        record(num_epochs - 1)
    finally:
        bar.close()
        training_log.close()
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, policy, optimizer, counts["done"] - 1, scheduler,
                        extra={"dpo": asdict(history)})
    return history


def _record(history, counts, throughput, steps_per_epoch, policy, reference, train_loader,
            val_loader, device, beta, eval_iter, log, epoch, training_log):
    """Evaluate after `counts["done"]` steps: into `history`, the log line and the training log."""
    step, tokens_per_s = counts["done"], throughput.rate(counts["tokens"])
    history.steps.append(step)
    history.train.append(dpo_stats(policy, reference, train_loader, device, beta, eval_iter))
    history.val.append(dpo_stats(policy, reference, val_loader, device, beta, eval_iter))
    training_log.write({"step": step, "epoch": round(step / steps_per_epoch, 4),
                        "tokens_seen": counts["tokens"], "lr": float(f"{counts['lr']:.6g}"),
                        **{f"{split}_{key}": json_number(value, 5)
                           for split in ("train", "val") for key, value in getattr(history, split)[-1].items()},
                        "tokens_per_s": tokens_per_s})
    throughput.restart(counts["tokens"])
    if log is not None:
        val = history.val[-1]
        log(f"Ep {epoch + 1} (Step {step:04d}): val loss {val['loss']:.3f}, "
            f"margin {val['margin']:.2f}, accuracy {val['accuracy']:.0%}")


def plot_dpo_history(history, path=None):
    """Three panels over the steps: the DPO loss, the reward margin and the preference
    accuracy, and the policy's chosen and rejected log-probabilities. Returns the figure.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for split, style in (("train", "-"), ("val", "--")):
        axes[0].plot(history.steps, history.series(split, "loss"), style, label=f"{split} loss")
        axes[1].plot(history.steps, history.series(split, "margin"), style, label=f"{split} reward margin")
        axes[2].plot(history.steps, history.series(split, "chosen_logp"), style, color="tab:green",
                     label=f"{split} chosen")
        axes[2].plot(history.steps, history.series(split, "rejected_logp"), style, color="tab:red",
                     label=f"{split} rejected")
    axes[0].axhline(math.log(2), color="grey", lw=0.8)
    axes[0].set_title("DPO loss (starts at log 2)")
    axes[1].set_title("reward margin (chosen - rejected)")
    axes[2].set_title("log p(response | prompt)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# --- scoring responses ---------------------------------------------------------------

def preference_scores(entries, key="model_response"):
    """The share of responses with the preferred property (`is_full_sentence`) and the
    exact match of the answer inside them (`answer_in`) against `output`, overall.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    from ftlib.evaluation.scores import exact_match

    if not entries:
        raise DataError("preference_scores: no entries")
    sentences = sum(is_full_sentence(e[key]) for e in entries)
    exact = sum(exact_match(answer_in(e[key]), e["output"]) for e in entries)
    return {"full_sentence": sentences / len(entries), "answer_exact_match": exact / len(entries),
            "n": len(entries)}


# --- the job: python -m ftlib dpo ----------------------------------------------------

def _check_dpo_config(config):
    """The DPO job's checks before any work: the values (`check_config`), `--out`, `--run`."""
    from ftlib.config import check_config
    from ftlib.plumbing.runfolder import check_run_out

    check_config(config)
    if config.tensorboard:
        from ftlib.training.loop import check_tensorboard

        check_tensorboard()
    config = dataclasses.replace(config, run=Path(config.run), out=Path(config.out),
                                 data=Path(config.data) if config.data else PREFERENCE_DATA_PATH)

    check_run_out(config.out, _dpo_protected(config))
    if not (config.run / "model.pth").is_file():
        raise ConfigError(f"--run {config.run}: no model.pth there; run `make finetune` first "
                          "(it writes runs/latest), or name a run folder of `python -m ftlib finetune`")
    return config


def _dpo_protected(config):
    """What `dpo --out` may never hold: the run it starts from and the preference data."""
    return [("the run folder it starts from (--run)", config.run), ("the preference data", config.data)]


def preference_loaders(train, val, tokenizer, batch_size, style="alpaca", seed=123):
    """(train_loader, val_loader) of preference pairs: shuffled (seeded) and in order.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(PreferenceDataset(train, tokenizer, style), batch_size=batch_size,
                              shuffle=True, generator=generator, collate_fn=preference_collate_fn)
    val_loader = DataLoader(PreferenceDataset(val, tokenizer, style), batch_size=batch_size,
                            collate_fn=preference_collate_fn)
    return train_loader, val_loader


def preference_tune(config=None, log=print):
    """The DPO job: load a fine-tuned run, tune it on the preference pairs, score the
    held-out pairs before and after, and write a run folder like `finetune`'s (model.pth,
    config.json, metrics.json, test-responses.json, dpo-plot.png, history.jsonl). Returns
    the metrics.

    Not in a notebook: the job behind `python -m ftlib dpo`; notebook 09 runs its steps.
    """
    from ftlib import set_seed
    from ftlib.data.instructions import split_data
    from ftlib.plumbing.device import get_device
    from ftlib.plumbing.envcheck import check_run_environment
    from ftlib.plumbing.fileio import atomic_write_json
    from ftlib.model.files import load_run_model, read_run_config, save_model
    from ftlib.evaluation.responses import generate_responses, save_responses
    from ftlib.plumbing.runfolder import prepare_run_folder, run_folder
    from ftlib.data.tokenizer import get_gpt2_tokenizer
    from ftlib.training.loop import HISTORY_FILE, make_optimizer, warmup_cosine_schedule

    check_run_environment()
    config = _check_dpo_config(config or DPOConfig())
    log = log or (lambda *a, **k: None)
    run_config = read_run_config(config.run)  # config.json only: the data are checked before the model loads
    style = run_config.get("prompt_style", "alpaca")
    tokenizer = get_gpt2_tokenizer()
    fits = partial(pair_too_long, tokenizer=tokenizer, style=style,
                   context_length=run_config["model_config"]["context_length"])
    entries = load_preference_data(config.data, skip_unusable=config.skip_unusable_pairs, log=log,
                                   check=fits)
    train, test, val = split_data(entries)
    if config.max_train_pairs:
        train = train[:config.max_train_pairs]
    if not (train and val and test):
        raise DataError(f"{config.data}: {len(entries)} pairs are too few for a training, "
                        "a validation and a test split")
    model, run_config = load_run_model(config.run)
    device = get_device(config.device)
    folder = prepare_run_folder(config.out, _dpo_protected(config), kind="dpo", log=log)
    with run_folder(folder):
        set_seed(config.seed)
        model.to(device)
        reference = frozen_reference(model)
        train_loader, val_loader = preference_loaders(train, val, tokenizer, config.batch_size,
                                                      style, config.seed)
        log(f"DPO from {config.run}: {len(train)} training pairs, {len(val)} validation, "
            f"{len(test)} test; beta {config.beta}, lr {config.lr}, {config.epochs} epoch(s)")

        def answer(m):
            return generate_responses(m, test, tokenizer, device, max_new_tokens=config.max_new_tokens,
                                      style=style, progress=config.progress)

        test_loader = DataLoader(PreferenceDataset(test, tokenizer, style), batch_size=config.batch_size,
                                 collate_fn=preference_collate_fn)
        before = answer(model)
        optimizer = make_optimizer(model, lr=config.lr, weight_decay=0.0)
        steps = len(train_loader) * config.epochs
        start = time.perf_counter()
        history = train_dpo(model, reference, train_loader, val_loader, optimizer, device,
                            config.epochs, beta=config.beta, nll_weight=config.nll_weight, eval_freq=max(1, steps // 10),
                            scheduler=warmup_cosine_schedule(optimizer, steps),
                            progress=config.progress, log=log,
                            history_file=folder.work / HISTORY_FILE,
                            tensorboard_dir=folder.work / "tensorboard" if config.tensorboard else None)
        train_time = time.perf_counter() - start
        after = answer(model)
        stats = dpo_stats(model, reference, test_loader, device, config.beta)
        for entry, old in zip(after, before):
            entry["model_response_before"] = old["model_response"]
        out = folder.work
        save_responses(after, out / "test-responses.json")
        save_model(model, out / "model.pth")
        import matplotlib.pyplot as plt
        plt.close(plot_dpo_history(history, out / "dpo-plot.png"))
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
        atomic_write_json(out / "config.json", {**run_config, "dpo": settings,
                                                "model_config": model.cfg, "device": str(device)})
        metrics = _dpo_metrics(config, before, after, stats, history, train_time, steps)
        atomic_write_json(out / "metrics.json", metrics)
        folder.commit()
    b, a = metrics["before"], metrics["after"]
    log(f"Full-sentence answers on {a['n']} held-out prompts: {b['full_sentence']:.1%} before, "
        f"{a['full_sentence']:.1%} after; "
        f"answer exact match {b['answer_exact_match']:.1%} -> {a['answer_exact_match']:.1%}; "
        f"preference accuracy {stats['accuracy']:.1%} ({train_time:.0f} s of training). "
        f"Run folder: {config.out}")
    return metrics


DPO_GOALS = {"full_sentence_at_least": 0.90, "answer_exact_match_drop_at_most": 0.02,
             "preference_accuracy_at_least": 0.95}


def _dpo_metrics(config, before, after, stats, history, train_time, steps):
    scores_before, scores_after = preference_scores(before), preference_scores(after)
    drop = scores_before["answer_exact_match"] - scores_after["answer_exact_match"]
    return {
        "run": str(config.run), "steps": steps, "train_time_s": round(train_time, 2),
        "before": scores_before, "after": scores_after,
        "held_out_preference": {key: round(value, 4) for key, value in stats.items()},
        "final_val": history.val[-1],
        "goals": {**DPO_GOALS,
                  "met": (scores_after["full_sentence"] >= DPO_GOALS["full_sentence_at_least"]
                          and drop <= DPO_GOALS["answer_exact_match_drop_at_most"] + 1e-9
                          and stats["accuracy"] >= DPO_GOALS["preference_accuracy_at_least"])},
    }
