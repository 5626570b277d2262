"""Fault injection (issue 12, "nothing lost, nothing silent"): bad input and faults
against the CLI, downloads, weight loaders, the file server and the Ollama client.

Each case asserts what the README promises: exit status 2 and one line that names
the file, entry or option; no traceback; nothing written or replaced; no temporary
file left. Real subprocesses (`python -m ftlib`), real signals, a real file-size
limit (RLIMIT_FSIZE) for a full disk, and real HTTP servers on 127.0.0.1.
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from ftlib.plumbing.errors import ConfigError, DownloadError, FtlibError
from helpers import RUN_FILES, RawServer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # the finished run every "nothing replaced" case starts from


# --- running the CLI ----------------------------------------------------------------

def _args(data, out, *extra):
    return ["finetune", "--data", str(data), "--out", str(out), "--batch-size", "4",
            "--max-new-tokens", "2", "--no-progress", "--max-steps", str(STEPS), *extra]


def _env():
    # one thread each: several runs share 2 cores
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _start(args, **popen):
    popen.setdefault("cwd", ROOT)
    return subprocess.Popen([sys.executable, "-m", "ftlib", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _run(args, timeout=120, **popen):
    proc = _start(args, **popen)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _one_line_error(result, *expected):
    """Exit 2, one line on stderr naming what is given, no traceback anywhere."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def _snapshot(folder):
    """{name: sha256} of a folder's files, to prove nothing was replaced."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _leftovers(parent):
    """Temporary things a run may leave beside or inside its folder."""
    found = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    found += [f"{d.name}/{p.name}" for d in parent.iterdir() if d.is_dir()
              for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    return found


@pytest.fixture(scope="module")
def good_run(small_data, tmp_path_factory):
    """A finished run folder (made once), whose copies the cases try to damage."""
    out = tmp_path_factory.mktemp("good") / "run"
    code, stdout, err = _run(_args(small_data, out), timeout=300)
    assert code == 0, stdout + err
    assert {p.name for p in out.iterdir()} == RUN_FILES
    return out


@pytest.fixture
def old_run(good_run, tmp_path):
    """A copy of the finished run in a folder of its own, and its snapshot."""
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    return out, _snapshot(out)


# --- cases that stop before any work: all started at once, checked one by one --------

def _bad_files(folder):
    files = {
        "nested.json": "[" * 100_000 + "]" * 100_000,
        "huge-int.json": '[{"instruction": "a", "output": "b", "n": ' + "9" * 5000 + "}]",
        "blank.json": json.dumps([{"instruction": "a", "output": "b"},
                                  {"instruction": "a", "output": "  \n"}]),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "a-file").write_text("not a folder")
    return folder


EARLY = {  # case -> (extra options, or a data file; what the error line must name)
    "allowed_max_length_cuts_every_response": (["--allowed-max-length", "5"], ["--allowed-max-length"]),
    # the shortest prompt of small_data's training entries is 29 tokens
    "prompts_longer_than_the_limit": (["--allowed-max-length", "28"], ["--allowed-max-length", "nothing to learn"]),
    "lr_inf": (["--lr", "inf"], ["--lr"]),
    "lr_nan": (["--lr", "nan"], ["--lr"]),
    "lora_rank_huge": (["--lora-rank", "100000"], ["--lora-rank", "100000"]),
    "seed_beyond_64_bits": (["--seed", str(2 ** 64)], ["--seed"]),
    "unreadable_data_file": ("/proc/self/mem", ["/proc/self/mem", "cannot be read"]),
    "deeply_nested_json": ("nested.json", ["nested.json", "nested too deeply"]),
    "huge_integer_json": ("huge-int.json", ["huge-int.json"]),
    "whitespace_only_entry": ("blank.json", ["blank.json", "entry 1", "'output'"]),
    "out_is_a_file": (["--out", "a-file"], ["--out", "a-file"]),
    "out_under_proc": (["--out", "/proc/no-such-dir/run"], ["--out", "/proc/no-such-dir/run"]),
}


@pytest.fixture(scope="module")
def early_results(small_data, tmp_path_factory):
    """Start every EARLY case at once (each exits within seconds), collect the results."""
    folder = _bad_files(tmp_path_factory.mktemp("early"))
    procs = {}
    for case, (extra, _) in EARLY.items():
        out = folder / case
        if isinstance(extra, str):  # a data file
            data = extra if extra.startswith("/") else folder / extra
            args = _args(data, out)
        elif extra[0] == "--out":
            out = Path(extra[1]) if extra[1].startswith("/") else folder / extra[1]
            args = _args(small_data, out)
        else:
            args = _args(small_data, out, *extra)
        procs[case] = (_start(args), out)
    results = {case: ((proc.wait(timeout=180), *proc.communicate()), out)
               for case, (proc, out) in procs.items()}
    return folder, results


@pytest.mark.parametrize("case", list(EARLY))
def test_bad_setting_or_data_stops_before_any_work(early_results, case):
    folder, results = early_results
    (code, out, err), run_dir = results[case]
    _one_line_error((code, out, err), *EARLY[case][1])
    assert "Held-out exact match" not in out and "Fine-tuning" not in out  # no work was done
    if case != "out_is_a_file":
        assert not run_dir.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no lock, no temp folder


def test_out_in_a_read_only_folder(small_data, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; covered by the /proc case")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _one_line_error(_run(_args(small_data, parent / "run")), "--out", "cannot write")
    finally:
        parent.chmod(0o755)


# --- a run that fails replaces nothing, and leaves nothing ---------------------------

def test_diverging_rerun_keeps_the_old_run_folder(small_data, old_run):
    out, before = old_run
    result = _run(_args(small_data, out, "--lr", "1e30"))
    _one_line_error(result, "--lr")
    assert _snapshot(out) == before
    assert not _leftovers(out.parent)


def test_full_disk_fails_in_one_line_and_replaces_nothing(small_data, old_run):
    out, before = old_run

    def small_files():  # every file this process writes is cut at 2 MB: a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    result = _run(_args(small_data, out), preexec_fn=small_files)
    _one_line_error(result, "cannot write the run folder", str(out))
    assert _snapshot(out) == before
    assert not _leftovers(out.parent)


# --- one run at a time; kill -9 leaves nothing behind for long -----------------------

# Windows has no fcntl: there the run folder is locked with the filelock package.
WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
from ftlib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_without_fcntl_locks_and_finishes(small_data, tmp_path):
    from ftlib.plumbing import runfolder

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, *_args(small_data, out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not _leftovers(tmp_path)  # the lock file is gone too
    # While one holds the lock, a second is refused in one line.
    unlock = runfolder._lock_with_filelock(out, tmp_path / ".run.lock")
    try:
        with pytest.raises(ConfigError, match="another run"):
            runfolder._lock_with_filelock(out, tmp_path / ".run.lock")
    finally:
        unlock()
    assert not _leftovers(tmp_path)


def test_second_run_on_the_same_folder_is_refused(small_data, old_run):
    out, before = old_run
    first = _start(_args(small_data, out, "--max-steps", "400"))
    try:
        for line in first.stdout:  # the lock is held from before the model is built
            if line.startswith("Model:"):
                break
        _one_line_error(_run(_args(small_data, out)), "--out", "another run")
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert _snapshot(out) == before  # killed: the old run folder is untouched


def test_kill_9_during_a_checkpoint_then_resume_cleans_up(small_data, old_run):
    out, before = old_run
    proc = _start(_args(small_data, out, "--max-steps", "60"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.parent.glob(".run.run-*.tmp/.checkpoint.pt.*.tmp")):
            break  # a checkpoint is being written
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _snapshot(out) == before
    assert list(out.parent.glob(".run.run-*.tmp")), "the killed run left its temporary folder"
    (out / ".model.pth.abcd1234.tmp").write_bytes(b"x" * 1000)  # as a killed atomic write leaves them (mkstemp: 8 random characters)

    code, stdout, err = _run(_args(small_data, out, "--resume", "--max-steps", str(STEPS + 1)))
    assert code == 0, stdout + err
    assert f"Resuming after step {STEPS - 1}" in stdout
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert not _leftovers(out.parent)


# --- --resume must continue the same run ---------------------------------------------

RESUME = {  # case -> (options that differ from the checkpoint's run, what the line names)
    "batch_size": (["--batch-size", "2"], ["--batch-size"]),
    "data": (["--max-train-entries", "20"], ["--data"]),
    "lora_added": (["--lora-rank", "4"], ["--lora-rank"]),
    "model": (["--model", "gpt2-small (124M)"], ["--model"]),
}


@pytest.mark.parametrize("case", list(RESUME))
def test_resume_with_other_settings_is_refused(small_data, old_run, case):
    out, before = old_run
    extra, expected = RESUME[case]
    result = _run([*_args(small_data, out, "--resume"), *extra])
    _one_line_error(result, "--resume", str(out / "checkpoint.pt"), *expected)
    assert _snapshot(out) == before
    assert not _leftovers(out.parent)


def test_resume_of_an_old_checkpoint_of_another_width_is_one_line(small_data, old_run):
    from ftlib.model.gpt import GPTModel, get_config
    from ftlib.model.files import save_checkpoint

    out, _ = old_run
    model = GPTModel({**get_config("tiny"), "emb_dim": 64})
    save_checkpoint(out / "checkpoint.pt", model, torch.optim.AdamW(model.parameters()), 1)
    before = _snapshot(out)  # an older ftlib's checkpoint: no settings saved in it
    result = _run(_args(small_data, out, "--resume"))
    _one_line_error(result, str(out / "checkpoint.pt"), "does not fit")
    assert "Model:" not in result[1]  # found before the model is built
    assert _snapshot(out) == before
    assert not _leftovers(out.parent)


def test_export_into_an_unwritable_place_is_one_line(good_run):
    _one_line_error(_run(["export-hf", str(good_run), "/proc/no-such-dir/hf"]),
                    "/proc/no-such-dir/hf")


# --- a run folder owns only what ftlib wrote there (issue 25) --------------------------

def _tree(folder):
    """{relative path: sha256} of every file under `folder`: the user's files, byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _small_run(good_run, folder, marker=True):
    """A run folder as `finetune` leaves it, with stand-ins for the weights (every case
    here is refused before a model is read: copying 100 MB per case would be the test)."""
    folder.mkdir(parents=True)
    for name in ("config.json", "metrics.json", *(["ftlib-run.json"] if marker else [])):
        shutil.copy(good_run / name, folder / name)
    for name in ("model.pth", "checkpoint.pt"):
        (folder / name).write_bytes(b"weights")
    return folder


def _users_folder(tmp_path, good_run, small_data):
    """A folder of the user's: notes, runs of their own, and the data file."""
    home = tmp_path / "mine"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("buy milk\n")
    for name in ("exp1", "exp2", "exp3"):
        _small_run(good_run, home / "runs" / name)
    _small_run(good_run, home / "legacy", marker=False)  # as ftlib wrote run folders before the marker
    shutil.copy(small_data, home / "data.json")
    return home


REFUSED = {  # case -> (--out relative to the user's folder, or the dpo/export command; the line names)
    "a_folder_of_own_files": ("notes", ["not an ftlib run folder"]),
    "a_parent_of_runs": ("runs", ["not an ftlib run folder"]),
    "the_folder_holding_the_data": (".", ["--out"]),
    "the_folder_holding_the_data_by_name": ("../mine", ["the data file"]),
    "inside_a_run": ("runs/exp1/sub", ["inside the run folder"]),
    "a_run_with_a_file_of_the_users": ("runs/exp2", ["'mine.txt'", "did not write"]),
    "a_glob_pattern": ("runs/*", []),  # literal: a new folder named '*' (checked below)
    "dpo_above_its_run": ("dpo", ["the run folder it starts from"]),
    "export_above_its_run": ("export", ["the run it exports"]),
    # found by a red-team pass
    "a_hidden_tmp_folder_of_the_users": ("hidden", ["not an ftlib run folder"]),
    "a_tmp_file_of_the_users_in_a_run": ("runs/exp3", ["'.draft.tmp'", "did not write"]),
    "a_symlink_to_a_folder": ("link", ["symbolic link"]),
    "a_dangling_symlink": ("dangling", ["symbolic link"]),
    "inside_a_run_without_the_marker": ("legacy/sub", ["inside the run folder"]),
    "the_current_folder_by_its_path": ("cwd", ["the current folder"]),
    "a_folder_of_the_users_named_like_a_kept_checkpoint": ("runs/exp1", ["is not ftlib's"]),
}


@pytest.fixture(scope="module")
def refused_results(small_data, good_run, tmp_path_factory):
    """Every REFUSED case at once, each in a user folder of its own (they exit within seconds)."""
    procs = {}
    for case, (out, _) in REFUSED.items():
        home = _users_folder(tmp_path_factory.mktemp(case), good_run, small_data)
        (home / "runs" / "exp2" / "mine.txt").write_text("my results\n")
        (home / "runs" / ".exp1.run-123.tmp").mkdir()  # another run's temporary folder
        (home / "runs" / ".exp1.run-123.tmp" / "checkpoint.pt").write_bytes(b"theirs")
        (home / "hidden" / ".backup.tmp").mkdir(parents=True)
        (home / "hidden" / ".backup.tmp" / "thesis.tex").write_text("years of work\n")
        (home / "runs" / "exp3" / ".draft.tmp").write_text("a draft\n")
        (home / "link").symlink_to(home / "notes")
        (home / "dangling").symlink_to(home / "nowhere")
        (home / "empty").mkdir()
        if case == "a_folder_of_the_users_named_like_a_kept_checkpoint":
            (home / "runs" / ".exp1.interrupted").mkdir()
            (home / "runs" / ".exp1.interrupted" / "mine.txt").write_text("mine\n")
        before = _tree(home)
        cwd = ROOT
        if out == "dpo":
            args = ["dpo", "--run", str(home / "runs" / "exp1"), "--out", str(home / "runs"),
                    "--no-progress"]
        elif out == "export":
            args = ["export-hf", str(home / "runs" / "exp1"), str(home)]
        elif case == "a_glob_pattern":
            args = _args(home / "data.json", home / out, "--max-steps", "1")
        elif out == "cwd":  # an empty folder, the current one, by its absolute path
            cwd = home / "empty"
            args = _args(home / "data.json", cwd)
        else:
            args = _args(home / "data.json", home / out)
        procs[case] = (_start(args, cwd=cwd), home, before)
    return {case: ((proc.wait(timeout=240), *proc.communicate()), home, before)
            for case, (proc, home, before) in procs.items()}


@pytest.mark.parametrize("case", list(REFUSED))
def test_out_never_replaces_what_the_user_owns(refused_results, case):
    result, home, before = refused_results[case]
    after = _tree(home)
    if case == "a_glob_pattern":  # taken literally: a run folder named '*', nothing else touched
        assert result[0] == 0, result
        assert {p.name for p in (home / "runs" / "*").iterdir()} == RUN_FILES
        assert {k: v for k, v in after.items() if not k.startswith("runs/*/")} == before
        return
    _one_line_error(result, *REFUSED[case][1])
    assert "Fine-tuning" not in result[1] and "DPO from" not in result[1]  # refused before any work
    assert after == before  # every file of the user's, byte for byte, and nothing added
    assert not [p.name for p in home.iterdir() if p.name.startswith(".")]
    assert (home / "link").is_symlink() and (home / "dangling").is_symlink() and (home / "empty").is_dir()


@pytest.mark.parametrize("out", [".", "..", ""])
def test_dot_dotdot_and_empty_out_are_one_line_before_training(small_data, out):
    result = _run(_args(small_data, out))
    _one_line_error(result, "--out", "name a folder")
    assert "Fine-tuning" not in result[1]


def test_ctrl_c_while_torch_is_imported_is_stopped_not_a_traceback(small_data, tmp_path):
    """A red-team pass found a crash, a traceback or an ignored Ctrl-C when it came
    during `import torch` (0.1 to 0.8 s after the start); now it is held until then."""
    for delay in (0.2, 0.5):
        proc = _start(_args(small_data, tmp_path / "run"))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in out + err, (delay, proc.returncode, err)
        assert err.strip().splitlines()[-1] == "Stopped."
        assert not (tmp_path / "run").exists()


def test_an_earlier_run_folder_without_the_marker_is_still_a_run(small_data, old_run):
    out, _ = old_run
    (out / "ftlib-run.json").unlink()  # as ftlib wrote run folders before the marker
    (out / "history.jsonl").unlink()   # ... and before the training log
    code, stdout, err = _run(_args(small_data, out))
    assert code == 0, stdout + err
    assert {p.name for p in out.iterdir()} == RUN_FILES


# --- resume after any ending; an interrupted rerun leaves the finished run (issue 25) --

def _stop_at_a_checkpoint(small_data, out, how):
    """Rerun into the finished run `out`; once the rerun has written a checkpoint, stop it
    with `how` (a signal). Returns (exit status, stdout, stderr)."""
    proc = _start(_args(small_data, out, "--max-steps", "80"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.parent.glob(".run.run-*.tmp/checkpoint.pt")):
            break
        time.sleep(0.01)
    proc.send_signal(how)
    stdout, err = proc.communicate(timeout=120)
    return proc.returncode, stdout, err


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_resume_after_any_ending_and_the_finished_run_stays(small_data, old_run, how):
    out, before = old_run
    code, stdout, err = _stop_at_a_checkpoint(small_data, out, getattr(signal, how))
    assert "Traceback" not in stdout + err, err
    assert _snapshot(out) == before  # the finished run, as it was
    if how != "SIGKILL":  # stopped at the end of a step: the checkpoint kept beside the run
        assert code == 130, (code, stdout, err)
        kept = out.with_name(".run.interrupted") / "checkpoint.pt"
        assert f"checkpoint saved to {kept}" in stdout, stdout
        step = torch.load(kept, weights_only=False)["step"]
    else:  # killed outright: its temporary folder, which the next run keeps
        step = torch.load(next(out.parent.glob(".run.run-*.tmp/checkpoint.pt")), weights_only=False)["step"]
    assert step > STEPS - 1  # the rerun's own checkpoint, not the finished run's

    code, stdout, err = _run(_args(small_data, out, "--resume", "--max-steps", str(step + 2)))
    assert code == 0, stdout + err
    assert f"Resuming after step {step} (from {out.with_name('.run.interrupted') / 'checkpoint.pt'})" in stdout
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == step + 1
    assert not _leftovers(out.parent)  # the kept checkpoint is gone once the run finished


def test_a_plain_rerun_says_it_starts_over_from_a_kept_checkpoint(small_data, old_run):
    out, _ = old_run
    code, _, _ = _stop_at_a_checkpoint(small_data, out, signal.SIGTERM)
    assert code == 130
    code, stdout, err = _run(_args(small_data, out))
    assert code == 0, stdout + err
    assert "did not finish; this run starts over (add --resume" in stdout
    assert not _leftovers(out.parent)


# --- weight files: the culprit, and only the culprit, is deleted ---------------------

@pytest.mark.parametrize("n_layer", [5, "2"])
def test_wrong_hparams_json_keeps_the_checkpoint(tmp_path, n_layer):
    from ftlib.classroom.toy_checkpoint import TOY_SIZE, write_openai_checkpoint
    from ftlib.model.weights import CHECKPOINT_DATA_FILES, download_and_load_gpt2

    mirror = tmp_path / "mirror"
    write_openai_checkpoint(mirror / TOY_SIZE)
    hparams = json.loads((mirror / TOY_SIZE / "hparams.json").read_text())
    (mirror / TOY_SIZE / "hparams.json").write_text(json.dumps({**hparams, "n_layer": n_layer}))
    from ftlib.classroom.serve import serve_directory

    local = tmp_path / "gpt2" / TOY_SIZE
    with serve_directory(mirror) as url:
        for _ in range(2):  # every run: the same one file is blamed, the weights stay
            with pytest.raises(DownloadError, match="hparams.json") as err:
                download_and_load_gpt2(TOY_SIZE, tmp_path / "gpt2", base_url=url, progress=False,
                                       allowed_sizes=(TOY_SIZE,))
            assert "n_layer" in str(err.value) and "\n" not in str(err.value)
            assert all((local / name).is_file() for name in (*CHECKPOINT_DATA_FILES, "checkpoint"))
            assert not (local / "hparams.json").exists()
        gets = [path for method, path, _ in url.requests if method == "GET"]
    assert gets.count(f"/{TOY_SIZE}/model.ckpt.data-00000-of-00001") == 1  # never fetched again


def test_safetensors_with_unexpected_keys_names_the_file(tmp_path):
    from safetensors.torch import save_file

    from ftlib.model.gpt import GPTModel
    from ftlib.classroom.toy_checkpoint import TOY_CONFIG
    from ftlib.model.weights import load_hf_safetensors_into_gpt

    path = tmp_path / "odd.safetensors"
    for state in ({"h.0.attn.surprise": torch.zeros(2)}, {"h.²": torch.zeros(2)},
                  {"wte.weight": torch.zeros(2), "decoder.layers.0.w": torch.zeros(2)}):
        save_file(state, str(path))
        with pytest.raises(ConfigError, match="odd.safetensors"):
            load_hf_safetensors_into_gpt(GPTModel(TOY_CONFIG), path)


# --- HTTP servers on 127.0.0.1 that misbehave on purpose ------------------------------

def _trickle(header):
    def reply(conn, stop):
        conn.sendall(header)
        for _ in range(200):  # at most 20 s, one byte each 0.1 s
            if stop.is_set():
                return
            conn.sendall(b"8")
            time.sleep(0.1)
    return reply


def test_download_from_a_trickling_server_meets_its_deadline(tmp_path):
    from ftlib.plumbing.download import download_file

    header = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    with RawServer(_trickle(header)) as server:
        start = time.monotonic()
        with pytest.raises(DownloadError, match="within 1 s"):
            download_file(f"{server.url}/f", tmp_path / "f", timeout=5, deadline=1, progress=False)
        assert time.monotonic() - start < 4
    assert not (tmp_path / "f").exists()


def test_body_cut_short_without_content_length_is_not_saved(tmp_path):
    from ftlib.plumbing.download import download_file

    def reply(conn, stop):  # close-delimited: no Content-Length, then the connection drops
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"half a file")

    with RawServer(reply) as server:
        with pytest.raises(DownloadError, match="no Content-Length"):
            download_file(f"{server.url}/f", tmp_path / "f", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_never_splices_two_versions_of_a_file(tmp_path):
    from ftlib.plumbing.download import download_file
    from ftlib.classroom.serve import serve_directory

    root, dest = tmp_path / "mirror", tmp_path / "out" / "model.bin"
    root.mkdir()
    old, new = os.urandom(300_000), os.urandom(300_000)
    (root / "model.bin").write_bytes(old)
    with serve_directory(root, fail_after_bytes=100_000) as server:
        with pytest.raises(DownloadError, match="interrupted"):
            download_file(f"{server}/model.bin", dest, progress=False)
        (root / "model.bin").write_bytes(new)  # the server's file changes, same size
        os.utime(root / "model.bin", ns=(time.time_ns() + 10**9,) * 2)
        server.fail_after_bytes = None
        download_file(f"{server}/model.bin", dest, progress=False)
        assert server.requests[-1][2] == "bytes=100000-"  # it asked to resume ...
    assert dest.read_bytes() == new  # ... and got the whole new file, not old[:100000] + new
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


def test_expected_sha256_is_checked_and_a_bad_file_is_not_kept(tmp_path):
    from ftlib.plumbing.download import download_file
    from ftlib.classroom.serve import serve_directory

    root = tmp_path / "mirror"
    root.mkdir()
    (root / "f").write_bytes(b"the file")
    good = hashlib.sha256(b"the file").hexdigest()
    with serve_directory(root) as server:
        with pytest.raises(DownloadError, match="sha256"):
            download_file(f"{server}/f", tmp_path / "out" / "f", progress=False, sha256="0" * 64)
        assert list((tmp_path / "out").iterdir()) == []
        download_file(f"{server}/f", tmp_path / "out" / "f", progress=False, sha256=good)
    assert (tmp_path / "out" / "f").read_bytes() == b"the file"


def test_download_onto_a_folder_is_one_error(tmp_path):
    from ftlib.plumbing.download import download_file

    (tmp_path / "dest").mkdir()
    with pytest.raises(DownloadError, match="is a folder"):
        download_file("http://127.0.0.1:9/f", tmp_path / "dest", progress=False)


def test_server_answers_404_to_nul_and_overlong_names(tmp_path, capfd):
    from ftlib.classroom.serve import serve_directory

    (tmp_path / "f").write_bytes(b"x")
    with serve_directory(tmp_path) as url:
        for path in ("/%00", "/" + "a" * 300, "/a%00b/" + "b" * 300):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path, timeout=5)
            assert err.value.code == 404
        assert urllib.request.urlopen(url + "/f", timeout=5).read() == b"x"  # still serving
    assert "Traceback" not in capfd.readouterr().err


# --- the judge: a reply counts only when Ollama says it is done ----------------------

def _ollama(*lines, close=True):
    body = b"".join(json.dumps(line).encode() + b"\n" if not isinstance(line, bytes) else line
                    for line in lines)

    def reply(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Connection: close\r\n\r\n" + body)
    return reply


@pytest.mark.parametrize("lines,expected", [
    ([{"message": {"content": "8"}, "done": False}], "ended before"),          # cut: "8" of "85"
    ([[1, 2]], "not Ollama's JSON lines"),                                     # a list
    ([{"message": {"content": None}, "done": False}], "no text"),              # null content
    ([{"message": None, "done": True}], "no text"),
    ([b"{" * 5000 + b"\n"], "not Ollama's JSON lines"),
])
def test_judge_refuses_a_cut_or_malformed_stream(lines, expected):
    from ftlib.evaluation.judge import query_model

    with RawServer(_ollama(*lines)) as server:
        with pytest.raises(FtlibError, match=expected) as err:
            query_model("score this", url=f"{server.url}/api/chat", timeout=5)
    assert "\n" not in str(err.value)


def test_judge_reply_from_a_trickling_server_meets_its_deadline():
    from ftlib.evaluation.judge import query_model

    header = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
    with RawServer(_trickle(header)) as server:
        start = time.monotonic()
        with pytest.raises(FtlibError, match="within 1 s"):
            query_model("score this", url=f"{server.url}/api/chat", timeout=5, deadline=1)
        assert time.monotonic() - start < 4
