"""Pretrain the tiny base model on data/pretraining-corpus.txt; write models/gpt2-tiny-base/.

    python scripts/pretrain.py                      # the committed base (about 7 minutes, one thread)
    python scripts/pretrain.py --out /tmp/base --epochs 8 --n-layers 4   # try other settings
    python scripts/pretrain.py --augmented          # the knowledge-augmented corpus (issue 29)

It prints the fact-completion score (plain-text prompts, greedy) per relation
and stores it in config.json with the corpus hash and the training settings.
"""

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AUGMENTED_CORPUS_PATH = REPO_ROOT / "data" / "pretraining-corpus-augmented.txt"
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from ftlib.model.gpt import TINY_BASE_CONFIG  # noqa: E402
from ftlib.model.base import BASE_MODEL_DIR, save_base_model  # noqa: E402
from ftlib.training.pretrain import (CORPUS_PATH, PRETRAIN_SETTINGS, corpus_sha256,  # noqa: E402
                                     corpus_token_ids, fact_completion, new_base_model, pretrain)
from ftlib.data.tokenizer import get_gpt2_tokenizer  # noqa: E402


def _shown(path):
    """`path` relative to the repository where it is inside it (as config.json records it)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if REPO_ROOT in path.parents else str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BASE_MODEL_DIR)
    parser.add_argument("--corpus", type=Path, default=CORPUS_PATH,
                        help="the corpus to pretrain on (default: data/pretraining-corpus.txt)")
    parser.add_argument("--augmented", action="store_true",
                        help="the knowledge-augmented corpus (data/pretraining-corpus-augmented.txt) "
                             "into models/gpt2-tiny-base-augmented/, unless --corpus or --out say otherwise")
    for key, value in PRETRAIN_SETTINGS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--emb-dim", type=int, default=TINY_BASE_CONFIG["emb_dim"])
    parser.add_argument("--n-layers", type=int, default=TINY_BASE_CONFIG["n_layers"])
    parser.add_argument("--n-heads", type=int, default=TINY_BASE_CONFIG["n_heads"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the committed base was trained so; results "
                             "are bit-identical only at the same thread count)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.augmented:
        if args.corpus == CORPUS_PATH:
            args.corpus = AUGMENTED_CORPUS_PATH
        if args.out == BASE_MODEL_DIR:
            args.out = BASE_MODEL_DIR.with_name(BASE_MODEL_DIR.name + "-augmented")

    torch.set_num_threads(args.threads)
    cfg = {**TINY_BASE_CONFIG, "emb_dim": args.emb_dim, "n_layers": args.n_layers, "n_heads": args.n_heads}
    settings = {key: getattr(args, key) for key in PRETRAIN_SETTINGS}
    tokenizer = get_gpt2_tokenizer()
    ids = corpus_token_ids(tokenizer, args.corpus)
    model = new_base_model(cfg, seed=settings["seed"])
    start = time.perf_counter()
    losses = pretrain(model, ids, progress=not args.no_progress, **settings)
    seconds = time.perf_counter() - start
    scores = fact_completion(model, tokenizer)
    print(f"Pretrained in {seconds:.0f} s; final loss {losses[-1]:.3f}")
    print("Fact completion: " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items()))
    info = {
        "corpus": _shown(args.corpus),
        "corpus_sha256": corpus_sha256(args.corpus),
        "corpus_tokens": len(ids),
        "pretraining": {**settings, "steps": len(losses), "final_loss": round(losses[-1], 4),
                        "seconds": round(seconds, 1), "threads": args.threads,
                        "torch": torch.__version__},
        "fact_completion": {k: round(v, 4) for k, v in scores.items()},
        "weights": "float16; out_head omitted (tied to tok_emb); rows of tokens "
                   "absent from the corpus are zero",
    }
    save_base_model(model, args.out, info, used_ids=set(ids))
    print(f"Wrote {args.out}/model.safetensors and config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
