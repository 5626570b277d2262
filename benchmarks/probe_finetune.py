"""Accuracy probes for issue 9: `make finetune`'s run with one change, and its scores.

    python benchmarks/probe_finetune.py                          # the default run, as a reference
    python benchmarks/probe_finetune.py --freeze tok_emb         # keep the input embedding fixed
    python benchmarks/probe_finetune.py --freeze ff              # keep the feed-forward layers fixed
    python benchmarks/probe_finetune.py --dropout 0.1
    python benchmarks/probe_finetune.py --restart-std 0          # unused rows as large as trained ones
    python benchmarks/probe_finetune.py --twin-rows              # "stone" starts equal to " stone"
    python benchmarks/probe_finetune.py --base-dir /tmp/base4    # a base from scripts/pretrain.py --out
    python benchmarks/probe_finetune.py --lora-rank 16           # LoRA adapters instead of every weight
    python benchmarks/probe_finetune.py --neftune 5              # noisy embeddings in training (NEFTune)
    python benchmarks/probe_finetune.py --shifted-positions      # packed examples keep their row positions
    python benchmarks/probe_finetune.py --replay 8               # + the pretraining loss on 8 corpus blocks a step
    python benchmarks/probe_finetune.py --extra-templates        # 8 training wordings per copying family
    python benchmarks/probe_finetune.py --extra-templates --copy-scale 2   # and twice their training entries

It runs the pipeline (`ftlib.pipeline.finetune`) on the bundled data with the
defaults of `make finetune`, changes one thing, and prints the held-out exact
match overall and per task family, the score on the facts only the pretraining
corpus states, and the training time. The run folder goes to --out (a temporary
folder by default). One run takes about as long as `make finetune`; the README's
tables of probes come from this script, one seed per row unless said.

The data changes (`--extra-templates`, `--copy-scale`) regenerate the bundled data
in memory with scripts/make_instruction_data.py: the held-out wordings stay the
ones no training entry uses, and the test entries of the lookup families stay the
same; those of the copying families are drawn again (the generator's random
numbers are used differently), so compare them by family, not entry by entry.
"""

import argparse
import importlib
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import torch  # noqa: E402

import make_instruction_data as gen  # noqa: E402
from ftlib import pipeline  # noqa: E402
from ftlib.model import base  # noqa: E402
pretrain = importlib.import_module("ftlib.training.pretrain")  # the module (ftlib.training.pretrain is also a function)

# Five more training wordings for each copying family (written for this probe; none is
# a held-out wording of make_instruction_data.TEMPLATES).
EXTRA_TEMPLATES = {
    "reverse_list": ["List these words from last to first.", "Reverse this list.",
                     "Write these words from the end to the start.",
                     "Say the words of this list in the opposite order.",
                     "What is this list in reverse order?"],
    "first_word": ["Give me the first word of this list.",
                   "Which word is at the start of the list below?", "Tell me which word comes first.",
                   "Name the first word in the following list.", "What word does this list begin with?"],
    "last_word": ["Give me the last word of this list.", "Which word is at the end of the list below?",
                  "Tell me which word comes last.", "Name the last word in the following list.",
                  "What word does this list end with?"],
    "unit_conversion": ["Express {n} {frm} in {to}.", "How many {to} make {n} {frm}?",
                        "Change {n} {frm} into {to}.", "Turn {n} {frm} into {to}.",
                        "What do {n} {frm} come to in {to}?"],
    "repeat_word": ['Say "{x}" {times}.', 'Type the word "{x}" {times}.', 'Give me "{x}" {times}.',
                    'Print "{x}" {times}.', 'Echo the word "{x}" {times}.'],
}
# Families whose training entries --copy-scale multiplies (unit conversion has only
# 120 (unit, number) pairs, so it keeps its 94).
SCALABLE = ("reverse_list", "first_word", "last_word", "repeat_word")


def variant_data(extra_templates=False, copy_scale=1):
    """(entries, n_train) of the bundled data regenerated with more training wordings
    and/or more training entries for the copying families."""
    templates = {family: (list(train), list(held)) for family, (train, held) in gen.TEMPLATES.items()}
    if extra_templates:
        for family, extra in EXTRA_TEMPLATES.items():
            train, held = templates[family]
            inputs = train[0][1]  # the families keep their input field ("{x}" or "")
            templates[family] = (train + [(text, inputs) for text in extra], held)
    quotas = {family: ((n_train * copy_scale if family in SCALABLE else n_train), n_test, n_val)
              for family, (n_train, n_test, n_val) in gen.QUOTAS.items()}
    n_train = sum(q[0] for q in quotas.values())
    with mock.patch.multiple(gen, TEMPLATES=templates, QUOTAS=quotas, N_TRAIN=n_train):
        return gen.generate(), n_train


def restart_rows(std=None, twins=False):
    """A replacement for ftlib.model.base._restart_unused_rows: normal rows of `std`
    (0: the mean norm of the trained rows), and with `twins` the row of a word without
    its leading space made equal to the row of the word with it ("stone", " stone")."""
    original = base._restart_unused_rows

    def restart(embedding, seed=123):
        unused = (embedding == 0).all(dim=1)
        if std is None:
            original(embedding, seed)
        else:
            scale = std or embedding[~unused].norm(dim=1).mean().item() / embedding.shape[1] ** 0.5
            original(embedding, seed, std=scale)
        if twins:
            from ftlib.data.tokenizer import get_gpt2_tokenizer

            tokenizer = get_gpt2_tokenizer()
            for i in torch.nonzero(unused).flatten().tolist():
                text = tokenizer.decode([i])
                bare = tokenizer.encode(text[1:]) if text.startswith(" ") and len(text) > 1 else []
                if len(bare) == 1 and unused[bare[0]]:
                    embedding[bare[0]] = embedding[i]

    return restart


def changed_model(args):
    """`pipeline.build_model` with the probe's freezing and dropout applied."""
    build = pipeline.build_model

    def build_model(config, device="cpu", log=print):
        model = build(config, device, log)
        in_part = {  # by parameter name: under LoRA, out_head is a wrapper with inner weights
            "tok_emb": lambda name: name.startswith("tok_emb."),
            "out_head": lambda name: name.startswith("out_head."),
            "pos_emb": lambda name: name.startswith("pos_emb."),
            "ff": lambda name: ".ff." in name,
        }
        for part in args.freeze:
            for name, p in model.named_parameters():
                if in_part[part](name):
                    p.requires_grad_(False)
        if args.neftune:
            model.tok_emb.register_forward_hook(noisy_embedding(args.neftune, args.seed))
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = args.dropout
            elif isinstance(getattr(module, "dropout", None), float):  # attention's dropout_p
                module.dropout = args.dropout
        return model

    return build_model


def noisy_embedding(alpha, seed):
    """A forward hook for the token embedding: in training, uniform noise in
    [-1, 1] * alpha / sqrt(L * d) added to each row's embeddings (L tokens, width d), as
    NEFTune does (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction
    Finetuning"); no noise when the model answers."""
    generator = torch.Generator().manual_seed(seed)

    def hook(module, inputs, output):
        if not module.training:
            return output
        length, width = output.shape[-2:]
        noise = torch.rand(output.shape, generator=generator) * 2 - 1
        return output + noise.to(output.device, output.dtype) * (alpha / (length * width) ** 0.5)

    return hook


def shifted_positions():
    """`trainer.batch_loss` where, in training, each packed example keeps the positions
    it has in its row (0 ... row length) instead of restarting at 0: the same example is
    seen at many offsets, so its absolute positions tell the model nothing."""
    from ftlib.training import loop as trainer

    loss = trainer.batch_loss

    def batch_loss(model, batch, device, reduction="mean"):
        inputs, targets, extras = trainer.split_batch(batch)
        if model.training and "position_ids" in extras:
            rows, length = inputs.shape
            extras = {**extras, "position_ids": torch.arange(length).expand(rows, length)}
            batch = (inputs, targets, extras)
        return loss(model, batch, device, reduction)

    return batch_loss


def replayed_corpus(blocks, block_size=64, seed=123, corpus=None):
    """`trainer._micro_batch_loss` plus, at each training step, the pretraining loss
    (`pretrain.restricted_loss`) on `blocks` random blocks of the corpus: the base keeps
    rehearsing the text its facts come from while it learns the instructions."""
    from ftlib.training import loop as trainer
    from ftlib.data.tokenizer import get_gpt2_tokenizer

    from ftlib.model.gpt import TINY_BASE_CONFIG

    ids = pretrain.corpus_token_ids(get_gpt2_tokenizer(), corpus or pretrain.CORPUS_PATH)
    vocab_ids, target_index = pretrain.restricted_vocab(ids, TINY_BASE_CONFIG["vocab_size"])
    ids = torch.tensor(ids)
    generator = torch.Generator().manual_seed(seed)
    loss_of = trainer._micro_batch_loss

    def micro_batch_loss(model, batch, device, *args):
        loss, value = loss_of(model, batch, device, *args)
        if model.training:
            starts = torch.randint(len(ids) - block_size - 1, (blocks, 1), generator=generator)
            chunk = ids[starts + torch.arange(block_size + 1)].to(device)
            loss = loss + pretrain.restricted_loss(model, chunk[:, :-1], chunk[:, 1:], vocab_ids.to(device),
                                               target_index.to(device))
        return loss, value

    return micro_batch_loss


def percent(x):
    return f"{100 * x:.1f} %"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", default="", help="comma list of tok_emb, out_head, pos_emb, ff")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--restart-std", type=float, default=None)
    parser.add_argument("--twin-rows", action="store_true")
    parser.add_argument("--shifted-positions", action="store_true")
    parser.add_argument("--neftune", type=float, default=0.0, help="NEFTune's alpha (noise on embeddings)")
    parser.add_argument("--replay", type=int, default=0, help="corpus blocks (64 tokens) per step")
    parser.add_argument("--replay-corpus", type=Path, default=None,
                        help="the corpus --replay rehearses (default: data/pretraining-corpus.txt)")
    parser.add_argument("--base-dir", type=Path, default=None)
    parser.add_argument("--extra-templates", action="store_true")
    parser.add_argument("--copy-scale", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters instead")
    parser.add_argument("--model", default=pipeline.RunConfig.model)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.freeze = [part for part in args.freeze.split(",") if part]
    torch.set_num_threads(args.threads)

    patches = [(pipeline, "build_model", changed_model(args))]
    if args.replay:
        from ftlib.training import loop as trainer

        patches.append((trainer, "_micro_batch_loss", replayed_corpus(args.replay, corpus=args.replay_corpus)))
    if args.shifted_positions:
        from ftlib.training import loop as trainer

        patches.append((trainer, "batch_loss", shifted_positions()))
    if args.restart_std is not None or args.twin_rows:
        patches.append((base, "_restart_unused_rows", restart_rows(args.restart_std, args.twin_rows)))
    if args.base_dir is not None:
        load = base.load_base_model
        patches.append((base, "load_base_model", lambda model_dir=None: load(args.base_dir)))
    if args.extra_templates or args.copy_scale != 1:
        data, n_train = variant_data(args.extra_templates, args.copy_scale)
        n_test = sum(q[1] for q in gen.QUOTAS.values())
        # the pipeline's split is by position (85/10/5 %); this file's parts are known
        patches.append((pipeline, "load_data", lambda config, log=print: ("bundled", data)))
        patches.append((pipeline, "split_for_training", lambda config, entries: (
            entries[:n_train], entries[n_train:n_train + n_test], entries[n_train + n_test:])))

    out = args.out or Path(tempfile.mkdtemp(prefix="probe-")) / "run"
    config = pipeline.RunConfig(model=args.model, epochs=args.epochs, lr=args.lr,
                                lora_rank=args.lora_rank, batch_size=args.batch_size,
                                seed=args.seed, out=out, progress=False)
    start = time.perf_counter()
    with ExitStack() as stack:
        for obj, name, value in patches:
            stack.enter_context(mock.patch.object(obj, name, value))
        metrics = pipeline.finetune(config, log=None)
    wall = time.perf_counter() - start
    families = metrics["after"]["per_task"]
    print(f"held-out exact match {percent(metrics['held_out_exact_match_after'])}; "
          f"{metrics['train_time_s']:.0f} s of training, {wall:.0f} s in all")
    print("  " + ", ".join(f"{name} {percent(s['exact_match'])}" for name, s in families.items()))
    only = metrics.get("pretraining_only")
    if only:
        print(f"facts only in pretraining {percent(only['after']['overall']['exact_match'])}: " +
              ", ".join(f"{name} {percent(s['exact_match'])}"
                        for name, s in only["after"]["per_task"].items()))
    print(f"run folder: {out}")
    print(json.dumps({"held_out": metrics["held_out_exact_match_after"],
                      "train_time_s": metrics["train_time_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
