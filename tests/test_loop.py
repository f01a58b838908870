"""The loop: its commands, one-line refusals, a whole run at a reduced size, and resume after a kill."""
import json
import os
import shutil
import signal
import subprocess
import sys

from common import format_table
from tests.conftest import ROOT


def test_loop_refuses_bad_counts_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--procs", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--procs must be at least 1, got 0" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--explore-limit", "-5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--explore-limit must be at least 0, got -5" in done.stderr
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--eval-splits", "dev,tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--eval-splits: unknown split 'tests'; valid: dev, test_seen, test_unseen" in done.stderr
    for flag, message in (("--jobs", "--jobs must be at least 1, got 0"),
                          ("--rollout-batch-size", "--rollout-batch-size must be at least 1, got 0")):
        done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), flag, "0"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


PIN_LINE = "$ export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2"
LOOP = [sys.executable, "loop.py", "--train-limit", "8", "--eval-limit", "2", "--sft-epochs", "1", "--iterations", "1",
        "--dpo-epochs", "1", "--max-steps", "2"]


def json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_rows(run):
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "model"} for row in rows]  # the model path names the run


def without_affinity(tmp_path):
    """The environment of a Mac or Windows, as far as the loop can tell: a sitecustomize on PYTHONPATH removes
    os.sched_getaffinity (Linux only) from the loop and every stage it starts."""
    hide = tmp_path / "no-affinity"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import os\nif hasattr(os, 'sched_getaffinity'):\n"
                                           "    del os.sched_getaffinity\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import os; print(hasattr(os, 'sched_getaffinity'))"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False"  # the removal takes effect in a child process
    return env


def test_loop_runs_and_resume_skips_finished_stages(tmp_path):
    """The whole loop at a reduced size (8 train tasks, 2 test tasks a split, one SFT and DPO epoch), where
    os.sched_getaffinity is missing (as on macOS and Windows), run again (every stage skipped), and killed
    in its DPO stage and rerun (it resumes to the same results)."""
    run = tmp_path / "run"
    first = subprocess.run(LOOP + ["--run", str(run)], cwd=ROOT, env=without_affinity(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "AttributeError" not in first.stderr and "$ wait" in first.stdout  # stages ran side by side
    from plumbing.launch import CPU_KERNELS, CPU_THREADS
    sft_record = json.loads((run / "sft" / "args.json").read_text())
    beside = json.loads((run / "eval" / "sft.test_seen.jsonl.args.json").read_text())
    assert sft_record["cpu_kernels"] == CPU_KERNELS == beside["cpu_kernels"]  # every stage on the pinned kernels
    assert (sft_record["threads"], beside["threads"]) == (CPU_THREADS, CPU_THREADS // 2)  # alone, side by side
    assert "$ python explore.py" in first.stdout and "[done]" not in first.stdout
    rows = read_rows(run)
    assert {(r["stage"], r["split"]) for r in rows} == {(s, split) for s in ("sft", "eto-1", "sft-continued-1")
                                                        for split in ("test_seen", "test_unseen")}
    assert all(r["n"] == 2 for r in rows)
    assert (run / "report.html").exists() and (run / "eval" / "expert.test_unseen.jsonl").exists()
    table = first.stdout.split("model ")[1]  # the printed table holds the rows of results.jsonl
    assert all(f"{r['avg_reward']:.1f}" in table for r in rows)
    # the stages typed by hand end in research/report.py, which rebuilds the same results (and table) from the evaluations
    by_hand = tmp_path / "by-hand"
    shutil.copytree(run, by_hand, ignore=shutil.ignore_patterns("results.jsonl", "report.html", "results.png"))
    done = subprocess.run([sys.executable, "research/report.py", "--run", str(by_hand)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [{**row, "model": row["model"].replace(str(run), "")} for row in json_lines(by_hand / "results.jsonl")] == \
        [{**row, "model": row["model"].replace(str(run), "")} for row in json_lines(run / "results.jsonl")]
    assert format_table(json_lines(run / "results.jsonl")) in first.stdout  # the loop's table, printed the same
    assert format_table(json_lines(run / "results.jsonl")) in done.stdout and (by_hand / "report.html").exists()

    second = subprocess.run(LOOP + ["--run", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    reran = [line for line in second.stdout.splitlines() if line.startswith("$ ")]
    assert second.returncode == 0 and reran == [PIN_LINE, f"$ python research/report.py --run {run}"]  # the page is rewritten
    assert second.stdout.count("[done]") == 14
    assert read_rows(run) == rows

    # a changed flag into a finished run: one line naming the stage and the flag, nothing reported or recorded
    loop_args = (run / "loop_args.json").read_text()
    changed = subprocess.run(LOOP + ["--run", str(run), "--dpo-lr", "0.5"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr, changed.stderr[-2000:]
    assert changed.stderr.strip().splitlines() == [
        f"error: {run}/iter1/model was made by another command (dpo.py: --lr was '3e-05' there, is '0.5' now); "
        "use a new --run, or --redo-changed to redo that stage and every stage after it"]
    assert "test_seen reward" not in changed.stdout  # no table
    assert (run / "loop_args.json").read_text() == loop_args and read_rows(run) == rows
    # --native-kernels is a change too: the stages would compute other numbers
    native = subprocess.run(LOOP + ["--run", str(run), "--native-kernels"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert native.returncode == 2 and "(explore.py: ATEN_CPU_CAPABILITY was 'avx2' there, is '(unset)' now)" in native.stderr

    # killed mid-stage (the DPO stage, with its child process), then rerun: it resumes to the same results.
    # The stages before DPO are copied from the first run (the same flags give the same files).
    killed_run = tmp_path / "killed"
    shutil.copytree(run, killed_run, ignore=shutil.ignore_patterns("model", "control", "eto-1.*", "sft-continued-1.*",
                                                                    "results.jsonl", "report.html", "results.png"))
    loop = subprocess.Popen(LOOP + ["--run", str(killed_run)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in loop.stdout:
        if line.startswith("$ ") and "python dpo.py" in line:
            break
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    assert not (killed_run / "iter1" / "model").exists() and not (killed_run / "results.jsonl").exists()
    resumed = subprocess.run(LOOP + ["--run", str(killed_run)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[done] python explore.py" in resumed.stdout
    assert any(line.startswith("$ ") and "python dpo.py" in line for line in resumed.stdout.splitlines())
    assert read_rows(killed_run) == rows


def dry_run(*flags):
    """The commands `python loop.py --dry-run FLAGS` prints, one string each."""
    done = subprocess.run([sys.executable, "loop.py", "--dry-run", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [command(line) for line in done.stdout.splitlines() if line.startswith("$ ") and line != "$ wait"]


def command(line):
    """A printed stage's command, without the share of the cores and the `&` of stages run side by side."""
    words = line[2:].removesuffix(" &").split(" ")
    return " ".join(words[1:] if words[0].startswith("OMP_NUM_THREADS=") else words)


def test_independent_stages_run_side_by_side_with_the_cores_shared_out():
    printed = subprocess.run([sys.executable, "loop.py", "--dry-run", "--run", "r"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout.splitlines()
    threads = 1  # the pinned 2 threads shared by two stages, whatever this machine's cores
    for out in ("r/eval/expert.test_seen.jsonl", "r/eval/sft.test_seen.jsonl", "r/iter1/model",
                "r/eval/eto-1.test_seen.jsonl", "r/eval/sft-continued-1.test_seen.jsonl"):
        [at] = [i for i, line in enumerate(printed) if line.endswith(f"--out {out} &")]  # the first of two, then wait
        assert printed[at].startswith(f"$ OMP_NUM_THREADS={threads} python ")
        assert printed[at + 1].startswith(f"$ OMP_NUM_THREADS={threads} python ") and printed[at + 1].endswith(" &")
        assert printed[at + 2] == "$ wait"
    assert printed[printed.index("$ wait") - 2].endswith("--out r/eval/expert.test_seen.jsonl &")
    one_at_a_time = subprocess.run([sys.executable, "loop.py", "--dry-run", "--run", "r", "--jobs", "1"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60).stdout
    assert "&" not in one_at_a_time and "wait" not in one_at_a_time
    assert one_at_a_time.count("OMP_NUM_THREADS") == 1 and PIN_LINE in one_at_a_time  # only in the pinned line
    native = subprocess.run([sys.executable, "loop.py", "--dry-run", "--run", "r", "--native-kernels"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60).stdout.splitlines()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"$ OMP_NUM_THREADS={max(1, cores // 2)} python explore.py --env shop --split test_seen --expert " \
           f"--out r/eval/expert.test_seen.jsonl &" in native and not any("export" in line for line in native)


def test_without_sched_getaffinity_the_native_stages_share_the_cpu_count(tmp_path):
    native = subprocess.run([sys.executable, "loop.py", "--dry-run", "--run", "r", "--native-kernels"], cwd=ROOT,
                            env=without_affinity(tmp_path), capture_output=True, text=True, timeout=60)
    assert native.returncode == 0, native.stderr[-2000:]
    assert f"$ OMP_NUM_THREADS={max(1, os.cpu_count() // 2)} python explore.py --env shop --split test_seen " \
           f"--expert --out r/eval/expert.test_seen.jsonl &" in native.stdout.splitlines()
    loaded = subprocess.run([sys.executable, "loop.py", "--dry-run", "--run", "r", "--model", "m"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60).stdout
    assert "&" not in loaded  # a loaded model's stages have the machine to themselves


def test_a_stage_failing_beside_another_stops_the_loop_in_one_line(tmp_path):
    done = subprocess.run(LOOP[:-1] + ["-1", "--run", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # --max-steps -1: both SFT evaluations refuse it
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--max-steps must be at least 1, got -1" in done.stderr
    assert "error: stage failed with exit status 2: OMP_NUM_THREADS=" in done.stderr
    assert not (tmp_path / "r" / "results.jsonl").exists()


def stage(commands, script, out):
    [command] = [c for c in commands if c.startswith(f"python {script} ") and c.endswith(f"--out {out}")]
    return command


TINY_LR, TINY_BETA = "3e-05", "0.1"  # the lecture recipe's DPO settings, chosen on dev (docs/results.md)


def test_the_stages_get_the_defaults_that_fit_the_model_and_a_given_flag_wins():
    tiny = dry_run("--run", "r")  # the lecture recipe: the paper's pair rule and Eq. 11 alone
    assert stage(tiny, "pairs.py", "r/iter1/pairs.jsonl") == (
        "python pairs.py --explored r/iter1/explore.jsonl --expert r/expert.jsonl --level trajectory "
        "--out r/iter1/pairs.jsonl")
    assert " --tiny-layers 2 --epochs 6 --lr 0.003 --batch-size 4 --warmup-ratio 0.03 " in stage(tiny, "sft.py", "r/sft")
    assert " --samples 1 --limit 500 --seed 0 --batch-size 200 " in stage(tiny, "explore.py", "r/iter1/explore.jsonl")
    eto = stage(tiny, "dpo.py", "r/iter1/model")
    assert eto.startswith(f"python dpo.py --model r/sft --pairs r/iter1/pairs.jsonl --lr {TINY_LR} --beta {TINY_BETA} ")
    assert "--sft-weight" not in eto and "--loss" not in eto and "--dpo-weight" not in eto  # no NLL term: Eq. 11
    full = dry_run("--run", "r", "--recipe", "full")
    assert " --tiny-layers 4 --epochs 10 --lr 0.003 --batch-size 16 --out " in stage(full, "sft.py", "r/sft")  # no warm-up flag
    assert " --limit " not in stage(full, "explore.py", "r/iter1/explore.jsonl")  # every train task
    assert "--level trajectory" in stage(full, "pairs.py", "r/iter1/pairs.jsonl")
    assert "--sft-weight" not in stage(full, "dpo.py", "r/iter1/model")
    # the divergence-pairs-with-NLL variant, one flag away, beside ETO from the same policy and exploration
    variant = dry_run("--run", "r", "--variants", "divergence-nll")
    assert stage(variant, "pairs.py", "r/iter1/pairs-eto-divergence-nll.jsonl") == (
        "python pairs.py --explored r/iter1/explore.jsonl --expert r/expert.jsonl --level divergence "
        "--out r/iter1/pairs-eto-divergence-nll.jsonl")
    assert stage(variant, "dpo.py", "r/iter1/eto-divergence-nll").startswith(
        "python dpo.py --model r/sft --pairs r/iter1/pairs-eto-divergence-nll.jsonl --sft-weight 1.0 --lr 0.0001 "
        "--beta 1.0 ")
    assert stage(variant, "dpo.py", "r/iter1/model") == eto
    assert stage(variant, "explore.py", "r/eval/eto-divergence-nll-1.test_unseen.jsonl")
    assert " --limit 100 " in stage(dry_run("--run", "r", "--train-limit", "100"), "explore.py", "r/iter1/explore.jsonl")
    loaded = dry_run("--run", "r", "--model", "path/to/chat-model")  # the paper's settings
    assert "--level trajectory" in stage(loaded, "pairs.py", "r/iter1/pairs.jsonl")
    assert " --pairs r/iter1/pairs.jsonl --lr 1e-06 --beta 0.1 --epochs 3 --batch-size 32 " in stage(loaded, "dpo.py", "r/iter1/model")
    assert " --lr " not in stage(loaded, "sft.py", "r/sft")  # sft.py picks its lr by model
    assert " --tiny-layers " not in stage(loaded, "sft.py", "r/sft")
    assert " --limit " not in stage(loaded, "explore.py", "r/iter1/explore.jsonl")
    assert " --batch-size " not in stage(loaded, "explore.py", "r/iter1/explore.jsonl")  # explore.py's default
    given = dry_run("--run", "r", "--model", "path/to/chat-model", "--beta", "0.5", "--sft-lr", "2e-5")
    assert " --beta 0.5 " in stage(given, "dpo.py", "r/iter1/model") and " --lr 2e-05" in stage(given, "sft.py", "r/sft")
    evaluations = [c for c in dry_run("--run", "r", "--eval-splits", "dev") if " --split train " not in c]
    assert [c for c in evaluations if c.startswith("python explore.py")] == [  # the expert, then each model, on dev only
        "python explore.py --env shop --split dev --expert --out r/eval/expert.dev.jsonl",
        "python explore.py --env shop --split dev --model r/sft --seed 0 --batch-size 200 --out r/eval/sft.dev.jsonl",
        "python explore.py --env shop --split dev --model r/iter1/model --seed 0 --batch-size 200 --out r/eval/eto-1.dev.jsonl",
        "python explore.py --env shop --split dev --model r/iter1/control --seed 0 --batch-size 200 --out r/eval/sft-continued-1.dev.jsonl"]
    # the control: the same steps on the same pairs, the preference term off
    control = stage(tiny, "dpo.py", "r/iter1/control")
    assert control.startswith("python dpo.py --model r/sft --pairs r/iter1/pairs.jsonl --dpo-weight 0 --sft-weight 1 ")


LINUX_ONLY = ("sched_getaffinity", "sched_setaffinity", "/proc/", "os.fork(", "resource.", "fcntl", "os.getuid",
              "signal.SIGKILL", "signal.SIGHUP", "os.killpg", "os.setsid")


def test_the_default_path_calls_nothing_linux_only():
    """The stages, the loop, plumbing/ and envs/ run on macOS and Windows: no call that exists only on Linux
    (or only on POSIX) outside a guard. plumbing/launch.py's guarded affinity call is the one exception."""
    import glob
    files = [*glob.glob(os.path.join(ROOT, "*.py")), *glob.glob(os.path.join(ROOT, "plumbing", "*.py")),
             *glob.glob(os.path.join(ROOT, "envs", "*.py"))]
    assert len(files) > 15
    found = []
    for path in files:
        for number, line in enumerate(open(path, encoding="utf-8"), 1):
            if any(word in line for word in LINUX_ONLY) and not line.lstrip().startswith("#"):
                found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    allowed = ['plumbing/launch.py', 'if hasattr(os, "sched_getaffinity"):', 'return len(os.sched_getaffinity(0))']
    assert [f for f in found if not (f.startswith(allowed[0]) and f.endswith((allowed[1], allowed[2])))] == []
