"""`python -m ftlib`: the main job end to end (small), LoRA and export, bad input, Ctrl-C and resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftlib.cli import main
from helpers import RUN_FILES, quick_args

ROOT = Path(__file__).resolve().parents[1]


def test_finetune_writes_a_complete_run_folder(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick_args(small_data, out, "--max-steps", "3")) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["n_test"] == 6 and metrics["n_train"] == 51
    assert 0.0 <= metrics["held_out_exact_match_after"] <= 1.0
    assert metrics["tokens_per_s"] > 0
    assert "learning_goal" not in metrics  # only the default bundled run has one
    responses = json.loads((out / "test-responses.json").read_text())
    assert len(responses) == 6
    assert all({"model_response", "model_response_before"} <= set(r) for r in responses)
    assert "Held-out exact match" in capsys.readouterr().out


def test_lora_run_saves_a_merged_model_that_exports(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick_args(small_data, out, "--max-steps", "2", "--lora-rank", "4",
                           "--lora-alpha", "8")) == 0
    printed = capsys.readouterr().out
    assert "LoRA rank 4, alpha 8" in printed and "trainable parameters" in printed
    config = json.loads((out / "config.json").read_text())
    assert (config["lora_rank"], config["lora_alpha"]) == (4, 8.0)
    state = torch.load(out / "model.pth", weights_only=True)
    assert not any(".lora." in key for key in state)  # merged: plain GPTModel keys

    hf_dir = tmp_path / "hf"
    assert main(["export-hf", str(out), str(hf_dir)]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in hf_dir.iterdir()}


def _fails_cleanly(argv, out, capsys, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    for text in expected:
        assert text in err
    assert not out.exists()  # nothing written


def test_malformed_data_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "Say hi", "output": "hi"}, {"instruction": "x"}]')
    out = tmp_path / "run"
    _fails_cleanly(quick_args(bad, out), out, capsys, str(bad), "entry 1", "output")

    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "Say hi", "output": "hi"},')
    _fails_cleanly(quick_args(broken, out), out, capsys, str(broken))


def test_unknown_model_and_missing_weights_are_clear_errors(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    _fails_cleanly(quick_args(small_data, out, "--model", "gpt5"), out, capsys,
                   "gpt5", "gpt2-medium (355M)")
    _fails_cleanly(quick_args(small_data, out, "--model", "gpt2-small (124M)",
                              "--weights-dir", str(tmp_path / "nowhere")),
                   out, capsys, "nowhere")
    _fails_cleanly(quick_args(small_data, out, "--lora-rank", "0"), out, capsys, "--lora-rank")
    _fails_cleanly(quick_args(small_data, out, "--resume"), out, capsys, "checkpoint")


def test_export_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "hf"
    _fails_cleanly(["export-hf", str(tmp_path / "no-run"), str(out)], out, capsys, "no-run")


def _cli(*args, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ftlib", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_ctrl_c_saves_a_checkpoint_and_resuming_reaches_the_same_weights(small_data, tmp_path):
    # 12 steps per epoch x 2 epochs; the losses are logged every step.
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"

    def with_out(out):
        return quick_args(small_data, out, "--epochs", "2")

    proc = _cli(*with_out(straight))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    proc = _cli(*with_out(stopped))
    lines = []
    for line in proc.stdout:  # wait until training runs, then press Ctrl-C
        lines.append(line)
        if line.startswith("Ep 1 (Step 000002)"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    assert "checkpoint saved to" in rest and "--resume" in rest, rest
    assert not (stopped / "model.pth").exists()
    step = torch.load(stopped / "checkpoint.pt", weights_only=False)["step"]
    assert 2 <= step < 2 * 12 - 1  # stopped after a finished step, before the end

    proc = _cli(*with_out(stopped), "--resume")
    output = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, output
    assert f"Resuming after step {step}" in output
    a = torch.load(straight / "model.pth", weights_only=True)
    b = torch.load(stopped / "model.pth", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_finetune_from_python_takes_a_run_config(small_data, tmp_path):
    from ftlib.plumbing.errors import ConfigError
    from ftlib.pipeline import RunConfig, finetune

    lines = []
    metrics = finetune(RunConfig(data=small_data, out=tmp_path / "run", batch_size=4, max_steps=2,
                                 max_new_tokens=2, progress=False, prompt_style="phi3",
                                 mask_prompt=False, max_train_entries=20), log=lines.append)
    assert metrics["n_train"] == 20 and metrics["steps"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["prompt_style"] == "phi3" and config["mask_prompt"] is False
    assert any("Held-out exact match" in line for line in lines)
    with pytest.raises(TypeError, match="epoch"):
        RunConfig(epoch=3)
    with pytest.raises(ConfigError, match="--epochs must be a whole number"):
        finetune(RunConfig(epochs="many"))


def test_runs_from_the_base_answer_alike_before_training_lora_too(small_data, tmp_path):
    # the base starts every run from the same weights, and LoRA changes nothing before
    # training (B = 0): a LoRA run's answers before training are the full run's
    from ftlib import pipeline

    settings = dict(data=small_data, max_steps=1, batch_size=4, max_new_tokens=3, progress=False)
    first = pipeline.finetune(pipeline.RunConfig(out=tmp_path / "a", **settings), log=None)
    lora = pipeline.finetune(pipeline.RunConfig(out=tmp_path / "b", lora_rank=2, **settings), log=None)
    assert lora["before"] == first["before"]
    responses = json.loads((tmp_path / "b" / "test-responses.json").read_text())
    first_responses = json.loads((tmp_path / "a" / "test-responses.json").read_text())
    assert [r["model_response_before"] for r in responses] == [r["model_response_before"] for r in first_responses]


def test_help_does_not_import_torch():
    """`python -m ftlib --help` answers at once (0.03 s here; 2 s when it imported torch)."""
    code = ("import sys\nfrom ftlib.cli import build_parser\n"
            "for argv in (['--help'], ['finetune', '--help'], ['dpo', '--help']):\n"
            "    try:\n        build_parser().parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# --- the options are made from the configs' fields ----------------------------------

def _subparser(name):
    import argparse

    from ftlib.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command,config_class", [("finetune", "RunConfig"), ("dpo", "DPOConfig")])
def test_every_config_field_has_a_flag_with_help_and_its_default(command, config_class):
    import dataclasses

    import ftlib.config
    from ftlib.config import option

    parser = _subparser(command)
    parser.format_help()  # no stray % in a help text
    lacking = []
    for f in dataclasses.fields(getattr(ftlib.config, config_class)):
        action = parser._option_string_actions.get(f.metadata["flag"] or option(f.name))
        if action is None or action.dest != f.name:
            lacking.append(f"{f.name}: no flag")
            continue
        if not (action.help or "").strip() or "default" not in action.help:
            lacking.append(f"{f.name}: no help, or no default in it: {action.help!r}")
        if f.default is not None:
            shown = ("on" if f.default else "off") if isinstance(f.default, bool) else str(f.default)
            if f"default: {shown})" not in action.help:
                lacking.append(f"{f.name}: the help does not show the default {shown}: {action.help!r}")
        assert action.default is None  # only the options given override the config
    assert not lacking, lacking


def test_model_defaults_are_shown_per_model():
    epochs = next(a for a in _subparser("finetune")._actions if a.dest == "epochs")
    assert "20 for the tiny models, 2 for GPT-2" in epochs.help


def test_generated_flags_reach_the_configs():
    from ftlib.cli import build_parser, config_from_args
    from ftlib.config import DPOConfig, RunConfig

    parser = build_parser()
    dpo = config_from_args(parser.parse_args(["dpo", "--nll-weight", "0.5"]), DPOConfig)
    assert dpo.nll_weight == 0.5
    assert config_from_args(parser.parse_args(["dpo"]), DPOConfig).nll_weight == 1.0
    run = config_from_args(parser.parse_args(["finetune", "--weight-decay", "0", "--no-warmup-cosine",
                                              "--grad-clip", "0.5", "--eval-points", "7",
                                              "--mask-prompt", "--no-progress"]))
    assert (run.weight_decay, run.warmup_cosine, run.grad_clip, run.eval_points) == (0.0, False, 0.5, 7)
    assert (run.mask_prompt, run.progress) == (True, False)
    assert config_from_args(parser.parse_args(["finetune"])) == RunConfig()  # nothing given: the defaults


def _finetune_config_json(folder, config):
    """config.json as `finetune` writes it: the resolved settings plus the run's facts."""
    from ftlib.config import config_json, resolve_config

    folder.mkdir(parents=True, exist_ok=True)
    facts = {"model_config": {"emb_dim": 128}, "dataset": "bundled", "device": "cpu", "world_size": 1}
    (folder / "config.json").write_text(json.dumps({**config_json(resolve_config(config)), **facts}))
    return folder / "config.json"


def test_config_file_is_the_base_and_flags_override_it(tmp_path):
    from ftlib.cli import build_parser, config_from_args
    from ftlib.config import DPOConfig, RunConfig, config_json

    path = _finetune_config_json(tmp_path / "run", RunConfig(epochs=3, lr=0.002, data=tmp_path / "d.json"))
    parser = build_parser()
    for given in (tmp_path / "run", path):  # the run folder or its config.json
        config = config_from_args(parser.parse_args(["finetune", "--config", str(given), "--seed", "7"]))
        assert (config.epochs, config.lr, config.seed) == (3, 0.002, 7)
        assert config.data == tmp_path / "d.json" and config.out == Path("runs/latest")
    config = config_from_args(parser.parse_args(["finetune", "--config", str(path), "--dataset", "chapter"]))
    assert config.data is None and config.dataset == "chapter"  # --dataset drops the file's --data

    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "config.json").write_text(json.dumps(
        {"model_config": {}, "epochs": 20, "dpo": config_json(DPOConfig(nll_weight=0.0, beta=0.2))}))
    dpo = config_from_args(parser.parse_args(["dpo", "--config", str(tmp_path / "dpo"), "--beta", "0.3"]),
                           DPOConfig)
    assert (dpo.nll_weight, dpo.beta, dpo.epochs) == (0.0, 0.3, 1)


def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "out"
    broken = tmp_path / "broken" / "config.json"
    broken.parent.mkdir()
    broken.write_text('{"epochs": 3,')
    _fails_cleanly(["finetune", "--config", str(broken), "--out", str(out)], out, capsys, str(broken))
    wrong = tmp_path / "wrong" / "config.json"
    wrong.parent.mkdir()
    wrong.write_text('{"epochs": "many", "model_config": {}}')
    _fails_cleanly(["finetune", "--config", str(wrong.parent), "--print-config"], out, capsys,
                   str(wrong), "'epochs'", "'many'")
    _fails_cleanly(["dpo", "--config", str(wrong), "--out", str(out)], out, capsys, str(wrong), "dpo")
    _fails_cleanly(["finetune", "--config", str(tmp_path / "nowhere"), "--print-config"], out, capsys,
                   "nowhere")


def test_print_config_prints_the_resolved_settings(tmp_path, capsys):
    from ftlib.config import RunConfig

    assert main(["finetune", "--print-config", "--model", "tiny"]) == 0
    printed = capsys.readouterr().out
    settings = json.loads(printed)
    assert (settings["model"], settings["epochs"], settings["lr"], settings["mask_prompt"]) == ("tiny", 20, 1e-3, True)
    assert printed.count("\n") == len(settings) + 2  # one key per line, and the braces
    assert main(["finetune", "--print-config", "--model", "gpt2-small (124M)", "--epochs", "1"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert (settings["epochs"], settings["lr"], settings["allowed_max_length"]) == (1, 5e-5, 1024)

    path = _finetune_config_json(tmp_path / "run", RunConfig(epochs=3))
    assert main(["finetune", "--print-config", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3
    assert main(["dpo", "--print-config", "--nll-weight", "0.5"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["nll_weight"] == 0.5 and settings["out"] == "runs/dpo"


def test_print_config_does_not_import_torch():
    code = ("import sys\nfrom ftlib.cli import main\n"
            "assert main(['finetune', '--print-config']) == 0\nprint('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("args,expected", [
    (["--epochs", "0"], ["--epochs", "got 0"]),
    (["--epochs", "many"], ["--epochs", "'many'"]),
    (["--model", "nope"], ["--model", "'nope'", "gpt2-medium (355M)"]),
    (["--grad-clip", "nan"], ["--grad-clip"]),
    (["--weight-decay", "-1"], ["--weight-decay"]),
    (["--batching", "sorted"], ["--batching", "'sorted'"]),
    (["--no-such-option"], ["--no-such-option"]),
])
def test_bad_values_of_generated_flags_are_one_line(tmp_path, capsys, args, expected):
    out = tmp_path / "run"
    _fails_cleanly(["finetune", "--out", str(out), *args], out, capsys, *expected)
    _fails_cleanly(["finetune", "--print-config", *args], out, capsys, *expected)


# --- what a run says: its length under --max-steps, its next steps; a wheel's missing files ---

def test_header_tells_the_steps_under_max_steps_and_the_end_the_next_steps(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick_args(small_data, out, "--max-steps", "2", "--epochs", "3")) == 0
    printed = capsys.readouterr().out
    # 51 training entries in batches of 4: 12 steps an epoch (the last batch dropped)
    assert "Fine-tuning gpt2-tiny-base on cpu: 2 steps (of 3 epochs, 36 steps), batch 4," in printed
    steps = printed[printed.index("Next steps:"):].splitlines()
    commands = [line.split("  #")[0].strip() for line in steps[1:]]
    assert commands == [f"python -m ftlib chat {out}",
                        f"python -m ftlib export-hf {out} {out}-hf",
                        f"python -m ftlib export-gguf {out} {out}-gguf",
                        f"python -m ftlib dpo --run {out} --out {out}-dpo"]


def test_a_whole_run_tells_its_epochs_and_steps(small_data, tmp_path, capsys):
    assert main(quick_args(small_data, tmp_path / "run", "--epochs", "1", "--max-train-entries", "8")) == 0
    assert "Fine-tuning gpt2-tiny-base on cpu: 1 epoch (2 steps), batch 4," in capsys.readouterr().out


def test_dpo_ends_with_its_next_steps(tmp_path, monkeypatch, capsys):
    import ftlib.training.dpo

    monkeypatch.setattr(ftlib.training.dpo, "preference_tune", lambda config: {"done": True})
    out = tmp_path / "my dpo"
    assert main(["dpo", "--run", str(tmp_path / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Next steps:\n")
    assert f"python -m ftlib chat '{out}'" in printed  # quoted: the path has a space
    assert f"python -m ftlib export-gguf '{out}' '{out}-gguf'" in printed
    assert "ftlib dpo" not in printed


def _without_the_repository(monkeypatch, tmp_path):
    """The bundled files' paths as in a non-editable install: beside the package, not there."""
    import ftlib.data.instructions
    import ftlib.model.base
    import ftlib.training.dpo

    site = tmp_path / "site-packages"
    monkeypatch.setattr(ftlib.data.instructions, "BUNDLED_DATA_PATH", site / "data" / "instruction-data.json")
    monkeypatch.setattr(ftlib.model.base, "BASE_MODEL_DIR", site / "models" / "gpt2-tiny-base")
    monkeypatch.setattr(ftlib.training.dpo, "PREFERENCE_DATA_PATH", site / "data" / "preference-data.json")
    return site


def test_a_non_editable_install_says_to_run_from_a_clone(small_data, tmp_path, monkeypatch, capsys):
    _without_the_repository(monkeypatch, tmp_path)
    out = tmp_path / "run"
    _fails_cleanly(["finetune", "--out", str(out)], out, capsys, "the bundled data (data/instruction-data.json)",
                   "the pretrained base (models/gpt2-tiny-base)", "not in this install",
                   "`pip install -e .`", "--data FILE and --model")
    _fails_cleanly(quick_args(small_data, out), out, capsys, "the pretrained base", "--model")
    _fails_cleanly(["dpo", "--run", str(tmp_path), "--out", str(out)], out, capsys,
                   "the bundled preference data", "`pip install -e .`", "--data FILE")
    from ftlib.config import TINY_BASE_CONFIG

    run = tmp_path / "a-run"  # chat --base reads its config.json alone
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "gpt2-tiny-base", "model_config": TINY_BASE_CONFIG}))
    _fails_cleanly(["chat", str(run), "--base"], out, capsys, "the pretrained base", "`pip install -e .`")


def test_a_clone_missing_a_bundled_file_is_told_which(tmp_path, monkeypatch, capsys):
    site = _without_the_repository(monkeypatch, tmp_path)
    site.mkdir()
    (site / "pyproject.toml").write_text("")  # a clone: the repository is there, the file is not
    out = tmp_path / "run"
    _fails_cleanly(["finetune", "--out", str(out), "--model", "tiny"], out, capsys,
                   "the bundled data (data/instruction-data.json) not found", "--data FILE")


def test_chat_help_does_not_import_torch():
    code = ("import sys\nfrom ftlib.cli import build_parser\n"
            "try:\n    build_parser().parse_args(['chat', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
