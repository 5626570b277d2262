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
    from ftlib.errors import ConfigError
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


def test_runs_in_one_process_answer_before_training_once(small_data, tmp_path, monkeypatch):
    # the base starts every run from the same weights (LoRA too: B = 0), so the answers
    # before training are generated once and reused by later runs with the same prompts
    import ftlib.responses
    from ftlib import pipeline

    calls = []
    real = ftlib.responses.generate_responses
    monkeypatch.setattr(ftlib.responses, "generate_responses",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    monkeypatch.setattr(pipeline, "_BEFORE", {})
    settings = dict(data=small_data, max_steps=1, batch_size=4, max_new_tokens=3, progress=False)
    first = pipeline.finetune(pipeline.RunConfig(out=tmp_path / "a", **settings), log=None)
    assert len(calls) == 2  # before and after
    lora = pipeline.finetune(pipeline.RunConfig(out=tmp_path / "b", lora_rank=2, **settings), log=None)
    assert len(calls) == 3 and lora["before"] == first["before"]  # only after
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
