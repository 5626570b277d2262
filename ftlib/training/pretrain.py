"""Pretraining a tiny GPT-2 on the bundled corpus: how the committed base was made.

The chapter fine-tunes a *pretrained* GPT-2: a model that can only continue
text learns to follow instructions. Offline, `models/gpt2-tiny-base/` plays that
part: a small GPT-2 (GPT-2's real vocabulary) pretrained for a few minutes on
`data/pretraining-corpus.txt` (written by scripts/make_pretraining_corpus.py).

- `corpus_token_ids`, `corpus_batches`: the corpus as one token stream, cut into
  (inputs, targets) blocks at a new random offset each epoch;
- `new_base_model`: a GPTModel whose output head *is* the token embedding (tied,
  as OpenAI's GPT-2), so the model fits OpenAI's checkpoint layout exactly;
- `pretrain`: a deterministic training loop with a progress bar;
- `fact_completion`: how many corpus facts the model completes greedily from a
  plain-text prompt ("The capital of Romania is" -> " Bucharest");
- the committed base is saved and loaded by ftlib/model/base.py.

Speed trick: the loss is a softmax over the token ids that occur in the corpus
(about 1,500) instead of all 50257. A token that never occurs is never a
target, so the full softmax would only push its logit down; dropping it makes
each step many times cheaper for a model this narrow, where the 50257-way output
layer is most of the work.
"""

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ftlib.model.gpt import TINY_BASE_CONFIG, GPTModel
from ftlib.training.loop import warmup_cosine_schedule
from ftlib.data.tokenizer import END_OF_TEXT

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_PATH = REPO_ROOT / "data" / "pretraining-corpus.txt"
FACTS_PATH = REPO_ROOT / "data" / "pretraining-facts.json"

# Pretraining settings; scripts/pretrain.py uses these.
PRETRAIN_SETTINGS = {
    "block_size": 128,    # tokens per training row; documents are 30-150 tokens
    "batch_size": 8,      # more, smaller steps memorise facts better than 16 (84 % vs 77 %)
    "epochs": 40,
    "lr": 3e-3,           # a small model from scratch: large steps, warm-up, cosine decay
    "weight_decay": 0.1,  # on matrices only, not on embeddings or norms
    "seed": 123,
}


def corpus_token_ids(tokenizer, path=CORPUS_PATH):
    """The corpus as one list of token ids (`<|endoftext|>` kept as GPT-2's id 50256).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    text = Path(path).read_text(encoding="utf-8")
    return tokenizer.encode(text, allowed_special={END_OF_TEXT})


def corpus_sha256(path=CORPUS_PATH):
    """The sha256 of the corpus file, stored with the base model to name its data.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def corpus_batches(ids, block_size, batch_size, generator):
    """One epoch: (inputs, targets) batches of shape (batch, block_size).

    The stream is cut into blocks starting at a random offset, so block edges fall
    in new places every epoch; the blocks are then shuffled. Targets are the
    inputs shifted by one token.

    Not in a notebook: one epoch of `pretrain`'s batches.
    """
    ids = torch.as_tensor(ids)
    offset = int(torch.randint(block_size, (1,), generator=generator))
    n_blocks = (len(ids) - offset - 1) // block_size
    starts = offset + block_size * torch.randperm(n_blocks, generator=generator)
    for i in range(0, n_blocks - batch_size + 1, batch_size):  # drop the last partial batch
        rows = starts[i:i + batch_size, None] + torch.arange(block_size + 1)  # (batch, block+1)
        chunk = ids[rows]
        yield chunk[:, :-1], chunk[:, 1:]


def new_base_model(cfg=TINY_BASE_CONFIG, seed=123):
    """A fresh GPTModel whose output head shares the token embedding's weight.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    model.out_head.weight = model.tok_emb.weight  # tied, as in OpenAI's GPT-2
    return model


def restricted_vocab(ids, vocab_size):
    """(vocab_ids, target_index) for `restricted_loss`: the sorted distinct ids of the
    token stream `ids`, and a (vocab_size,) map from a full id to its place among them.

    Not in a notebook: `pretrain`'s set-up.
    """
    vocab_ids = torch.tensor(sorted(set(ids)))
    target_index = torch.zeros(vocab_size, dtype=torch.long)
    target_index[vocab_ids] = torch.arange(len(vocab_ids))
    return vocab_ids, target_index


def restricted_loss(model, inputs, targets, vocab_ids, target_index):
    """Cross-entropy over the corpus's token ids only (see the module docstring).

    `vocab_ids` (V',) are the ids kept; `target_index` maps a full id to its
    place in `vocab_ids`.

    Not in a notebook: the loss of one `pretrain` step.
    """
    hidden = model.hidden_states(inputs)                    # (b, t, d)
    logits = hidden @ model.out_head.weight[vocab_ids].T    # (b, t, V')
    return F.cross_entropy(logits.flatten(0, 1), target_index[targets].flatten())


def _optimizer(model, lr, weight_decay):
    """AdamW with weight decay on the matrices of the blocks only: embeddings and
    norms keep theirs (a decayed embedding would shrink rows of rare tokens)."""
    decay = [p for n, p in model.named_parameters()
             if p.dim() == 2 and n.startswith("trf_blocks")]
    other = [p for n, p in model.named_parameters()
             if not (p.dim() == 2 and n.startswith("trf_blocks"))]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def pretrain(model, ids, block_size=128, batch_size=8, epochs=40, lr=3e-3,
             weight_decay=0.1, seed=123, progress=True, log=print):
    """Train `model` on the token stream `ids`; return the loss of every step.

    Deterministic for a given seed on one thread count: the block offsets and
    order come from a generator seeded with `seed`. Linear warm-up over 5 % of
    the steps, then cosine decay to a tenth of `lr`.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    generator = torch.Generator().manual_seed(seed)
    vocab_ids, target_index = restricted_vocab(ids, model.cfg["vocab_size"])
    steps_per_epoch = (len(ids) - block_size) // block_size // batch_size
    total = steps_per_epoch * epochs
    optimizer = _optimizer(model, lr, weight_decay)
    schedule = warmup_cosine_schedule(optimizer, total)  # 5 % warm-up, cosine to lr / 10
    log(f"Pretraining on {len(ids):,} tokens ({len(vocab_ids):,} distinct): "
        f"{epochs} epochs of {steps_per_epoch} steps, batch {batch_size} x {block_size} tokens")
    model.train()
    losses = []
    bar = tqdm(total=total, disable=not progress, desc="pretraining")
    for _ in range(epochs):
        for inputs, targets in corpus_batches(ids, block_size, batch_size, generator):
            loss = restricted_loss(model, inputs, targets, vocab_ids, target_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update()
    bar.close()
    model.eval()
    return losses


def load_facts(path=FACTS_PATH):
    """The corpus facts as completion probes: dicts with prompt, answer, relation.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    return json.loads(Path(path).read_text(encoding="utf-8"))


def complete_facts(model, facts, tokenizer, batch_size=64):
    """For each fact: True if greedy decoding after `prompt` gives exactly `answer`'s tokens.

    One forward pass per batch: prompt + answer, right-padded, and the argmax at
    each answer position compared with the answer's next token. With a causal
    model this is the same as generating the answer greedily token by token.

    Not in a notebook: the check behind `fact_completion`.
    """
    rows = [(tokenizer.encode(f["prompt"]), tokenizer.encode(f["answer"])) for f in facts]
    results = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            width = max(len(p) + len(a) for p, a in chunk)
            batch = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, (p, a) in enumerate(chunk):
                batch[r, :len(p) + len(a)] = torch.tensor(p + a)
            predicted = model(batch).argmax(-1)  # (b, width): the next token at each position
            for r, (p, a) in enumerate(chunk):
                results.append(predicted[r, len(p) - 1:len(p) + len(a) - 1].tolist() == a)
    return results


def fact_completion(model, tokenizer, facts=None):
    """Share of corpus facts completed correctly, overall and per relation.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    facts = load_facts() if facts is None else facts
    correct = complete_facts(model, facts, tokenizer)
    scores = {"overall": sum(correct) / len(correct)}
    for relation in sorted({f["relation"] for f in facts}):
        hits = [c for c, f in zip(correct, facts) if f["relation"] == relation]
        scores[relation] = sum(hits) / len(hits)
    return scores
