"""How much faster is generation with the KV cache? Greedy, batch 1, random weights.

    python benchmarks/bench_generate.py            # gpt2-small shape and tiny; 50/200/500 tokens
    python benchmarks/bench_generate.py --quick    # tiny model, few tokens: seconds
    python benchmarks/bench_generate.py --threads 2 --models tiny --tokens 200

Three ways to generate the same tokens are timed:
- "cache":    `generate(..., use_cache=True)`: prompt once, then one token per step;
- "no cache": `generate(..., use_cache=False)`: the whole (cropped) sequence every
  step, with the output head on the last position only (see `_last_logits`);
- "book":     the chapter's loop: the whole sequence every step and the output
  head on every position (`model(idx)[:, -1, :]`).
"cache/none" is what the cache alone buys; "cache/book" what a learner gains over
the chapter's code. Each cell: one warm-up call, then the median of `--reps` timed
runs (a cell whose first run takes longer than `--long` seconds is timed once;
"runs" gives the counts). Tokens/s counts new tokens over the whole call, prefill
included. "same" checks that all three produced the same tokens. Where prompt +
new tokens exceed the context, the cached run re-runs the window each step past it
(see ftlib/model/generate.py) and its advantage shrinks: the table marks those rows.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from ftlib.model.generate import generate  # noqa: E402
from ftlib.model.gpt import GPTModel, get_config  # noqa: E402


def book_generate(model, idx, max_new_tokens, context_size):
    """The chapter's greedy loop, as printed in the book: logits for every position."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])  # (b, t, vocab)
        idx = torch.cat((idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


METHODS = {
    "cache": lambda model, idx, n, ctx: generate(model, idx, n, ctx, use_cache=True),
    "no cache": lambda model, idx, n, ctx: generate(model, idx, n, ctx, use_cache=False),
    "book": book_generate,
}


def time_method(method, model, prompt, new_tokens, reps, long_s):
    """Return (median seconds, runs, output ids) of `reps` timed greedy generations."""
    context = model.cfg["context_length"]
    method(model, prompt, 5, context)  # warm-up
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = method(model, prompt, new_tokens, context)
        times.append(time.perf_counter() - start)
        if times[0] > long_s:
            break  # a long cell: one run is enough to see the ratio
    return statistics.median(times), len(times), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 10 and 50 tokens")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--prompt-len", type=int, default=20, help="prompt tokens")
    parser.add_argument("--long", type=float, default=60.0,
                        help="seconds after which a cell is timed only once")
    parser.add_argument("--models", default="gpt2-small (124M),tiny",
                        help="comma-separated names for get_config")
    parser.add_argument("--tokens", default="50,200,500", help="comma-separated new-token counts")
    parser.add_argument("--skip-book", action="store_true",
                        help="skip the chapter's loop (the slowest: minutes for gpt2-small, 500 tokens)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        plan = [("tiny", [10, 50])]
        args.reps = min(args.reps, 2)
    else:
        counts = [int(n) for n in args.tokens.split(",")]
        plan = [(name.strip(), counts) for name in args.models.split(",")]

    methods = [m for m in METHODS if not (args.skip_book and m == "book")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"prompt {args.prompt_len} tokens, greedy, batch 1, random weights")
    header = (f"{'model':<19}{'new':>5}" + "".join(f"{m + ' tok/s':>15}" for m in methods)
              + f"{'cache/none':>12}{'cache/book':>12}{'same':>6}  {'runs':<9}note")
    print(header)
    print("-" * len(header))
    rows = []
    for name, token_counts in plan:
        torch.manual_seed(123)
        model = GPTModel(get_config(name)).eval()
        context = model.cfg["context_length"]
        prompt = torch.randint(0, model.cfg["vocab_size"], (1, args.prompt_len),
                               generator=torch.Generator().manual_seed(0))
        for new in token_counts:
            timed = {m: time_method(METHODS[m], model, prompt, new, args.reps, args.long)
                     for m in methods}
            outs = [out for _, _, out in timed.values()]
            row = {
                "model": name, "new": new,
                **{f"{m} tok/s": new / t for m, (t, _, _) in timed.items()},
                "cache/none": timed["no cache"][0] / timed["cache"][0],
                "cache/book": timed["book"][0] / timed["cache"][0] if "book" in timed else None,
                "same": all(torch.equal(outs[0], o) for o in outs[1:]),
                "runs": "/".join(str(n) for _, n, _ in timed.values()),
                "note": "",
            }
            if args.prompt_len + new > context:
                row["note"] = f"past context {context} for the last {args.prompt_len + new - context}"
            rows.append(row)
            book = f"{row['cache/book']:>11.1f}x" if row["cache/book"] else f"{'-':>12}"
            print(f"{name:<19}{new:>5}" + "".join(f"{row[m + ' tok/s']:>15.1f}" for m in methods)
                  + f"{row['cache/none']:>11.1f}x{book}{'yes' if row['same'] else 'NO':>6}"
                  f"  {row['runs']:<9}{row['note']}", flush=True)
    return rows


if __name__ == "__main__":
    main()
