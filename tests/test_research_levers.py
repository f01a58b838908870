"""research/levers.py: its table from hand-made rows, its refusals, and (slow) a tiny end-to-end run."""
import json
import subprocess
import sys

import pytest

from research.levers import levers_table
from tests.conftest import ROOT


def test_levers_table_puts_each_lever_beside_its_control():
    def row(lever, model, seed, reward, item_1=0, item_2=0):
        return {"lever": lever, "model": model, "seed": seed, "avg_reward": reward, "success_rate": 10.0 * seed,
                "item_1": item_1, "item_2": item_2, "options_right": 20 + seed, "invalid_rate": 1.0, "n": 200}
    pairs_0, pairs_1 = ({"item_pairs": n, "item_1_chosen": 1, "item_1_rejected": n - 1} for n in (30, 40))
    rows = [row("-", "sft", 0, 60.0, 190), row("-", "sft", 1, 64.0, 180),
            {**row("dpop", "eto", 0, 70.0, 5, 150), **pairs_0}, row("dpop", "control", 0, 66.0),
            {**row("dpop", "eto", 1, 61.0, 10, 120), **pairs_1}, row("dpop", "control", 1, 63.5)]
    table = levers_table(rows)
    assert table.startswith("dev, 200 tasks, seeds 0, 1")
    assert "| - | sft | 62.0 [60.0, 64.0] | 5.0 |  | 370 / 0 | 41 of 400 | 1.0 |" in table
    assert "| dpop | eto | 65.5 [70.0, 61.0] | 5.0 | +4.0, -2.5 | 15 / 270 | 41 of 400 | 1.0 | 70 (2 / 68) |" in table
    assert "| dpop | control | 64.8 [66.0, 63.5] |" in table and table.count(" |  |\n") == 2  # sft, control: no pairs
    rows += [{**row("dpop", "eto", 0, 72.0), "iteration": 2}, {**row("dpop", "control", 0, 67.5), "iteration": 2}]
    table = levers_table(rows)  # a later iteration is its own row, beside its own iteration's control
    assert "| dpop (iter 2) | eto | 72.0 [72.0] | 0.0 | +4.5 |" in table
    assert "| dpop | eto | 65.5 [70.0, 61.0] | 5.0 | +4.0, -2.5 |" in table
    del rows[0]["options_right"]  # a row from before the column: shown as unknown, not as zero
    assert "| - | sft | 62.0 [60.0, 64.0] | 5.0 |  | 370 / 0 | - | 1.0 |" in levers_table(rows)


def test_an_unknown_lever_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/levers.py", "--run", str(tmp_path / "r"), "--levers", "eto,magic"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown lever 'magic'; valid levers: eto," in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_levers_run_end_to_end_and_share_a_control(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "research/levers.py", "--run", str(run), "--seeds", "0", "--levers", "eto,dpop", "--train-limit", "6",
               "--dev-limit", "2", "--sft-epochs", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "levers.jsonl").read_text().splitlines()]
    assert [(r["lever"], r["model"]) for r in rows] == [("-", "sft"), ("eto", "eto"), ("eto", "control"),
                                                        ("dpop", "eto"), ("dpop", "control")]
    assert rows[2] == {**rows[4], "lever": "eto"}  # one control for the two levers on the same pairs
    assert done.stdout.count("$ python dpo.py") == 2  # eto and the shared control; dpop trains its loss in dpo.py's loop:
    assert done.stdout.count("$ python research/preference_losses.py") == 1 and "--loss dpop" in done.stdout
    assert (run / "levers.md").read_text().startswith("dev, 2 tasks, seeds 0")


@pytest.mark.slow
def test_a_second_iteration_goes_on_from_each_model_of_the_first(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "research/levers.py", "--run", str(run), "--seeds", "0", "--levers", "eto", "--iterations", "2",
               "--train-limit", "6", "--dev-limit", "2", "--sft-epochs", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "levers.jsonl").read_text().splitlines()]
    assert [(r["model"], r.get("iteration")) for r in rows] == [("sft", None), ("eto", 1), ("control", 1),
                                                                ("eto", 2), ("control", 2)]
    levers = run / "seed0" / "levers"
    # iteration 2: ETO from ETO 1 (which also explores), the control from control 1, on ETO 1's pairs
    iter2 = run / "seed0" / "iter2"
    explore_2 = next(line for line in done.stdout.splitlines()
                     if line.startswith("$ python explore.py") and "explore-eto" in line)
    assert f"--model {levers / 'eto'} " in explore_2 and explore_2.endswith(str(iter2 / "explore-eto.jsonl"))
    assert f"dpo.py --model {levers / 'eto'} --pairs {iter2 / 'pairs-eto.jsonl'}" in done.stdout
    assert f"dpo.py --model {levers / 'control-greedy-divergence'} --pairs {iter2 / 'pairs-eto.jsonl'}" in done.stdout
    assert (levers / "eto-iter2" / "args.json").exists() and (levers / "control-eto-iter2" / "args.json").exists()
    assert "| eto (iter 2) | eto |" in (run / "levers.md").read_text()
    assert all(r["item_pairs"] >= r["item_1_chosen"] + r["item_1_rejected"] for r in rows if r["model"] == "eto")


def test_iterations_below_one_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/levers.py", "--run", str(tmp_path / "r"), "--iterations", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--iterations must be at least 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_unbalanced_sft_args_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/levers.py", "--run", str(tmp_path / "r"), "--sft-args", "--lr '1e-3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sft-args \"--lr '1e-3\": No closing quotation" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()
