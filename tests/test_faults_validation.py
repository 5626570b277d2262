"""Validation that sees everything later code will (issue 25): what used to pass the
checks at the start and fail at the end of a run, after the work it threw away.

- text that is not UTF-8 (a lone surrogate "\\udfff") in any field of an entry;
- preference files with unusable pairs (skipped, with one line, or refused with
  `--strict-pairs`), while malformed files are still refused;
- model configs (config.json) with impossible or mistyped sizes;
- the environment: an output encoding that cannot print ftlib's text, an
  MPLBACKEND that names no backend;
- a GPT-2 weights folder that cannot be written, named as such.

Each failure is one line naming the file, the entry and the field (or the key, the
variable, the folder), exit status 2 from the CLI, no traceback, and the user's
files unchanged byte for byte. The environment cases run real subprocesses, all
started at once.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftlib.cli import build_parser, config_from_args, main
from ftlib.data.instructions import load_instruction_data
from ftlib.training.dpo import DPOConfig, load_preference_data, make_preference_pair, pair_too_long
from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.model.gpt import GPTModel
from ftlib.model.files import load_run_model
from ftlib.data.tokenizer import get_gpt2_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# emb_dim 32, 2 heads, 2 layers; 256 positions, so no bundled pair is too long for it
SMALL = {"vocab_size": 50257, "context_length": 256, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
         "drop_rate": 0.0, "qkv_bias": False}


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(*paths):
    """{path: sha256} of files and of the files in folders, to prove nothing changed."""
    files = [f for p in map(Path, paths) for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return {str(f): _digest(f) for f in files if f.is_file()}


def _one_line(message, *expected):
    assert "\n" not in message and "Traceback" not in message, message
    for text in expected:
        assert text in message, (text, message)


def _write_json(path, value):
    """JSON as a user's editor may save it: lone surrogates as \\u escapes (ensure_ascii)."""
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return path


def _pairs(small_data, n=None):
    """Pairs in the chapter's format (instruction, input, output, chosen, rejected)."""
    entries = json.loads(small_data.read_text(encoding="utf-8"))[:n]
    return [{k: make_preference_pair(e)[k] for k in ("instruction", "input", "output", "chosen", "rejected")}
            for e in entries]


def _fake_run(folder, cfg=SMALL, seed=0):
    """A run folder as `finetune` leaves it, for what `dpo` and `load_run_model` read:
    config.json (the model config) and model.pth (a random model of that config)."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(GPTModel(SMALL).state_dict(), folder / "model.pth")
    _write_json(folder / "config.json", {"model": "tiny", "prompt_style": "alpaca", "model_config": cfg})
    return folder


# --- subprocesses: every case whose environment matters, started at once -------------

def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key in ("PYTHONIOENCODING", "MPLBACKEND"):
        env.pop(key, None)
    return {**env, **extra}


def _unwritable_folder(tmp_path):
    """A real folder this process cannot write into: read-only for a normal user; for
    root (who writes anywhere), /sys, where no folder can be made. None if neither."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        os.mkdir("/sys/ftlib-weights-probe")
    except OSError:
        return Path("/sys")
    os.rmdir("/sys/ftlib-weights-probe")
    return None


@pytest.fixture(scope="module")
def cli_cases(small_data, tmp_path_factory):
    """{case: (exit status, stdout, stderr, folder it must not create, files to keep)}."""
    tmp = tmp_path_factory.mktemp("cli")
    entries = json.loads(small_data.read_text(encoding="utf-8"))
    # 60 entries: 51 train, 6 test (entries 51-56), 3 validation; entry 53 is a test entry
    entries[53] = {**entries[53], "output": entries[53]["output"] + "\udfff"}
    surrogate = _write_json(tmp / "surrogate.json", entries)
    bad_run = _fake_run(tmp / "bad-run", {**SMALL, "n_heads": 0})
    missing = str(tmp / "no-such-run")
    cases = {  # case: (environment, arguments, what the line must name, user files)
        "ascii_stdout": ({"PYTHONIOENCODING": "ascii"}, ["dpo", "--run", missing],
                         ["standard output", "'ascii'", "PYTHONIOENCODING=utf-8"], []),
        "bogus_mplbackend": ({"MPLBACKEND": "no-such-backend"}, ["dpo", "--run", missing],
                             ["MPLBACKEND='no-such-backend'", "not a matplotlib backend"], []),
        "mplbackend_module_missing": ({"MPLBACKEND": "module://no_such_ftlib_backend"}, ["dpo", "--run", missing],
                                      ["MPLBACKEND", "no module 'no_such_ftlib_backend'"], []),
        "surrogate_in_a_test_entry": ({}, ["finetune", "--data", str(surrogate), "--max-steps", "1"],
                                      [str(surrogate), "entry 53", "field 'output'", "UTF-8"], [surrogate]),
        "run_config_n_heads_0": ({}, ["dpo", "--run", str(bad_run)],
                                 [str(bad_run / "config.json"), "'n_heads'", "got 0"], [bad_run]),
    }
    weights = _unwritable_folder(tmp)
    if weights is not None:
        cases["weights_dir_unwritable"] = (
            {}, ["finetune", "--data", str(small_data), "--model", "gpt2-small (124M)",
                 "--weights-dir", str(weights), "--max-steps", "1"],
            ["GPT-2 weights folder", str(weights), "cannot be written", "--weights-dir"], [small_data])
    procs = {}
    for case, (env, args, expected, keep) in cases.items():
        out = tmp / f"out-{case}"
        before = _snapshot(*keep)
        proc = subprocess.Popen([sys.executable, "-m", "ftlib", *args, "--out", str(out), "--no-progress"],
                                cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, encoding="utf-8", errors="replace")
        procs[case] = (proc, out, expected, keep, before)
    results = {}
    for case, (proc, out, expected, keep, before) in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        results[case] = (proc.returncode, stdout, stderr, out, expected, keep, before)
    if weights is not None and weights != Path("/sys"):
        weights.chmod(0o755)
    return results


CLI_CASES = ["ascii_stdout", "bogus_mplbackend", "mplbackend_module_missing", "surrogate_in_a_test_entry",
             "run_config_n_heads_0", "weights_dir_unwritable"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_stops_before_any_work_with_one_line(cli_cases, case):
    if case not in cli_cases:
        pytest.skip("no folder here that this process cannot write (root, and /sys is writable)")
    code, stdout, stderr, out, expected, keep, before = cli_cases[case]
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    _one_line(lines[0], *expected)
    assert "run folder" not in lines[0]  # the weights folder is not the run folder
    assert "Fine-tuning" not in stdout and "DPO from" not in stdout  # no work was done
    assert not out.exists()
    assert _snapshot(*keep) == before


# --- 1. text that is not UTF-8 --------------------------------------------------------

@pytest.mark.parametrize("field", ["instruction", "input", "output", "task"])
def test_a_lone_surrogate_in_any_field_is_refused_at_loading(tmp_path, field):
    entries = [{"instruction": "Name a color.", "input": "", "output": "Red", "task": "color"} for _ in range(3)]
    entries[2] = {**entries[2], field: entries[2][field] + "a\udfffb"}
    path = _write_json(tmp_path / "data.json", entries)
    before = _snapshot(path)
    with pytest.raises(DataError) as info:
        load_instruction_data(path)
    _one_line(str(info.value), str(path), "entry 2", f"field {field!r}", "'\\udfff'", "UTF-8")
    str(info.value).encode("utf-8")  # the message itself can be printed
    assert _snapshot(path) == before


def test_a_lone_surrogate_nested_or_in_a_key_is_refused(tmp_path):
    base = {"instruction": "Name a color.", "input": "", "output": "Red"}
    for extra, field in (({"meta": {"notes": ["fine", {"x": "\ud800"}]}}, "'meta'"),
                         ({"ta\udfffsk": "color"}, "'ta\\udfffsk'")):
        path = _write_json(tmp_path / "data.json", [base, {**base, **extra}])
        with pytest.raises(DataError) as info:
            load_instruction_data(path)
        _one_line(str(info.value), "entry 1", f"field {field}")
    # a real character outside the BMP, spelled as a surrogate pair, is text
    path = _write_json(tmp_path / "data.json", [{**base, "output": "Red \U0001F600"}])
    assert load_instruction_data(path)[0]["output"] == "Red \U0001F600"


def test_a_lone_surrogate_in_a_preference_pair_is_refused(small_data, tmp_path):
    pairs = _pairs(small_data, 12)
    pairs[4]["rejected"] += "\udfff"
    path = _write_json(tmp_path / "pairs.json", pairs)
    before = _snapshot(path)
    with pytest.raises(DataError) as info:
        load_preference_data(path, skip_unusable=True)  # malformed, not unusable: never skipped
    _one_line(str(info.value), str(path), "entry 4", "field 'rejected'")
    assert _snapshot(path) == before


# --- 2. preference pairs: unusable ones skipped, malformed files refused ---------------

def test_identical_pair_is_skipped_with_one_line_and_left_out(small_data, tmp_path):
    pairs = _pairs(small_data, 20)
    pairs[17]["rejected"] = pairs[17]["chosen"]  # as in the chapter's own preference file
    path = _write_json(tmp_path / "instruction-data-with-preference.json", pairs)
    before = _snapshot(path)
    lines = []
    kept = load_preference_data(path, skip_unusable=True, log=lines.append)
    assert lines == [f"{path}: skipped 1 of 20 pairs: chosen and rejected identical (entry 17)"]
    assert kept == pairs[:17] + pairs[18:]
    # without skipping (the library's default, and --strict-pairs) the file is refused
    with pytest.raises(DataError) as info:
        load_preference_data(path)
    _one_line(str(info.value), str(path), "entry 17", "'chosen' and 'rejected' are the same text")
    assert _snapshot(path) == before


def test_skipped_pairs_are_counted_by_reason(small_data, tmp_path):
    pairs = _pairs(small_data, 30)
    for i in (2, 5, 6, 7, 8, 9, 11):
        pairs[i]["rejected"] = pairs[i]["chosen"]
    pairs[3]["rejected"] = "  \n"
    pairs[4]["chosen"] = ""
    path = _write_json(tmp_path / "pairs.json", pairs)
    lines = []
    kept = load_preference_data(path, skip_unusable=True, log=lines.append)
    assert len(kept) == 21
    assert lines == [f"{path}: skipped 9 of 30 pairs: chosen and rejected identical "
                     "(7 entries: 2, 5, 6, 7, 8, ...); 'rejected' empty (entry 3); 'chosen' empty (entry 4)"]
    for i, pair in enumerate(pairs):  # every pair is refused, if not skipped
        pairs[i] = {**pair, "rejected": pair["chosen"]}
    _write_json(path, pairs)
    with pytest.raises(DataError, match="none of its 30 pairs can teach a preference"):
        load_preference_data(path, skip_unusable=True)


@pytest.mark.parametrize("damage, expected", [
    ("not json", ["not valid JSON"]),
    ({"drop": "rejected"}, ["entry 1", "field 'rejected'", "found missing"]),
    ({"set": ("chosen", 7)}, ["entry 1", "field 'chosen'", "found int 7"]),
    ({"drop": "output"}, ["entry 1", "missing field 'output'"]),
])
def test_malformed_preference_files_are_still_refused(small_data, tmp_path, damage, expected):
    pairs = _pairs(small_data, 5)
    pairs[3]["rejected"] = pairs[3]["chosen"]  # an unusable pair after the malformed one
    path = tmp_path / "pairs.json"
    if damage == "not json":
        path.write_text(json.dumps(pairs)[:-5], encoding="utf-8")
    else:
        if "drop" in damage:
            del pairs[1][damage["drop"]]
        else:
            key, value = damage["set"]
            pairs[1][key] = value
        _write_json(path, pairs)
    before = _snapshot(path)
    with pytest.raises(DataError) as info:
        load_preference_data(path, skip_unusable=True)
    _one_line(str(info.value), str(path), *expected)
    assert _snapshot(path) == before


def test_pairs_longer_than_the_model_are_unusable(small_data, tmp_path):
    tokenizer = get_gpt2_tokenizer()
    pairs = _pairs(small_data, 6)
    pairs[2]["chosen"] = "word " * 300  # far past 256 positions
    path = _write_json(tmp_path / "pairs.json", pairs)
    assert pair_too_long(pairs[0], tokenizer, 256) is None
    lines = []
    kept = load_preference_data(path, skip_unusable=True, log=lines.append,
                                check=lambda e: pair_too_long(e, tokenizer, 256))
    assert len(kept) == 5 and lines == [f"{path}: skipped 1 of 6 pairs: "
                                        "longer than the model's 256 positions (entry 2)"]
    with pytest.raises(DataError, match="entry 2: longer than the model's 256 positions"):
        load_preference_data(path, check=lambda e: pair_too_long(e, tokenizer, 256))


def test_strict_pairs_option_sets_the_config_field():
    parser = build_parser()
    assert config_from_args(parser.parse_args(["dpo"]), DPOConfig).skip_unusable_pairs is True
    assert config_from_args(parser.parse_args(["dpo", "--strict-pairs"]), DPOConfig).skip_unusable_pairs is False


def test_dpo_skips_an_identical_pair_or_refuses_it_with_strict_pairs(small_data, tmp_path, capsys, one_thread):
    run = _fake_run(tmp_path / "sft")
    pairs = _pairs(small_data)
    pairs[17]["rejected"] = pairs[17]["chosen"]
    data = _write_json(tmp_path / "pairs.json", pairs)
    before = _snapshot(data, run)
    args = ["dpo", "--run", str(run), "--data", str(data), "--batch-size", "8", "--max-new-tokens", "2",
            "--no-progress"]

    strict = tmp_path / "strict"
    assert main([*args, "--out", str(strict), "--strict-pairs"]) == 2
    err = capsys.readouterr().err
    _one_line(err.strip(), str(data), "entry 17", "the same text")
    assert not strict.exists()

    out = tmp_path / "dpo"
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 1
    assert f"{data}: skipped 1 of 60 pairs: chosen and rejected identical (entry 17)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # 59 pairs: 50 train (7 batches of 8), 5 test, 4 validation
    assert metrics["steps"] == 7 and metrics["after"]["n"] == 5
    assert _snapshot(data, run) == before


# --- 3. model configs -----------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"n_heads": 0}, "'n_heads' must be a positive whole number, got 0"),
    ({"n_heads": -2}, "'n_heads' must be a positive whole number, got -2"),
    ({"n_heads": "2"}, "'n_heads' must be a positive whole number, got '2'"),
    ({"n_heads": 3}, "'emb_dim' 32 is not divisible by 'n_heads' 3"),
    ({"emb_dim": 2.0}, "'emb_dim' must be a positive whole number, got 2.0"),
    ({"n_layers": True}, "'n_layers' must be a positive whole number, got True"),
    ({"drop_rate": 1.5}, "'drop_rate' must be a number in [0, 1), got 1.5"),
    ({"qkv_bias": "false"}, "'qkv_bias' must be true or false, got 'false'"),
    ({"context_length": None}, "lacks 'context_length'"),
    ({"emb_dim": 64}, "its 'emb_dim' is 64, the weights have 32"),      # mistyped, against model.pth
    ({"n_layers": 200}, "its 'n_layers' is 200, the weights have 2"),
    ({"vocab_size": 50000}, "its 'vocab_size' is 50000, the weights have 50257"),
])
def test_impossible_model_configs_name_the_file_and_the_key(tmp_path, change, expected):
    cfg = {k: v for k, v in {**SMALL, **change}.items() if v is not None}
    run = _fake_run(tmp_path / "run", cfg)
    before = _snapshot(run)
    with pytest.raises(ConfigError) as info:
        load_run_model(run)
    _one_line(str(info.value), str(run / "config.json"), expected)
    assert _snapshot(run) == before


def test_gpt_model_and_the_base_config_refuse_zero_heads(tmp_path):
    from ftlib.model.base import load_base_model

    with pytest.raises(ConfigError, match="n_heads must be a positive whole number, got 0"):
        GPTModel({**SMALL, "n_heads": 0})  # was a ZeroDivisionError
    base = tmp_path / "base"
    base.mkdir()
    _write_json(base / "config.json", {"model_config": {**SMALL, "n_heads": 0}})
    with pytest.raises(ConfigError) as info:
        load_base_model(base)
    _one_line(str(info.value), str(base / "config.json"), "n_heads")


# --- 4. the environment ---------------------------------------------------------------

@pytest.mark.parametrize("encoding, errors, refused", [
    ("ascii", "strict", "U+00E9"), ("latin-1", "strict", "U+4E2D"), ("ascii", "backslashreplace", None),
    ("utf-8", "strict", None), ("gb18030", "strict", None),
])
def test_an_output_that_cannot_print_ftlibs_text_is_refused(monkeypatch, encoding, errors, refused):
    from ftlib.plumbing.envcheck import check_run_environment

    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors=errors))
    if refused is None:
        check_run_environment()
        return
    with pytest.raises(ConfigError) as info:
        check_run_environment()
    _one_line(str(info.value), "standard output", refused, "PYTHONIOENCODING=utf-8")
    str(info.value).encode("ascii")  # printable on the very terminal it complains about


@pytest.mark.parametrize("backend, refused", [
    ("no-such-backend", "is not a matplotlib backend"), ("module://no_such_ftlib_backend", "no module"),
    ("module://no_such_package.backend", "no module"), ("Agg", None), ("svg", None), ("", None),
])
def test_mplbackend_must_name_a_backend(backend, refused):
    from ftlib.plumbing.envcheck import _check_matplotlib_backend

    if refused is None:
        _check_matplotlib_backend(backend)
        return
    with pytest.raises(ConfigError) as info:
        _check_matplotlib_backend(backend)
    _one_line(str(info.value), f"MPLBACKEND={backend!r}", refused, "MPLBACKEND=agg")


# --- 5. the GPT-2 weights folder ------------------------------------------------------

def test_a_weights_folder_that_cannot_be_written_is_named(tmp_path):
    from ftlib.model.weights import download_and_load_gpt2

    in_the_way = tmp_path / "gpt2"
    in_the_way.write_text("a file where the weights folder should be")
    places = [in_the_way]
    unwritable = _unwritable_folder(tmp_path)
    if unwritable is not None:
        places.append(unwritable)
    try:
        for place in places:
            before = _snapshot(place) if place.is_file() else None
            with pytest.raises(ConfigError) as info:
                download_and_load_gpt2("toy", place, base_url="http://127.0.0.1:9", progress=False,
                                       allowed_sizes=("toy",))
            _one_line(str(info.value), f"GPT-2 weights folder {place}", "cannot be written")
            assert "run folder" not in str(info.value)
            if before is not None:
                assert _snapshot(place) == before
    finally:
        if unwritable is not None and unwritable != Path("/sys"):
            unwritable.chmod(0o755)
