"""research/report.py: the numbers on the page, checked by hand; the page, escaped; the page in a real browser."""
import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dpo import tokenize_pair
from common import sequence_logps
from envs.shop import ShopEnv
from explore import rollout
from pairs import make_pairs
from research.report import action_kind, behaviour, item_pair_counts, options_as_asked, sample_pairs, turn_rewards
from sft import build_tiny_model, build_tiny_tokenizer
from tests.conftest import ROOT

PLANTED = "Thought: <script>document.title='pwned'</script> I pick the second.\nAction: click[item 2]"


def scripted(replies_by_task):
    """A policy that plays fixed replies per task (the turn index is the number of replies so far)."""
    def policy(conversations, task_ids):
        return [(replies_by_task[t][sum(m["role"] == "assistant" for m in c)], True) for c, t in zip(conversations, task_ids)]
    return policy


def records(split, n, wrong_item):
    """Expert episodes of the first n tasks of a split, and episodes that open `wrong_item` instead."""
    env = ShopEnv()
    task_ids = env.task_ids(split)[:n]
    experts = {t: env.expert(t) for t in task_ids}
    failures = {}
    for t, turns in experts.items():
        rank = int(turns[1].split("click[item ")[1].rstrip("]"))
        failures[t] = [turns[0], PLANTED.replace("item 2", f"item {wrong_item if rank != wrong_item else wrong_item + 1}")] + turns[2:]
    episodes = [(t, 0) for t in task_ids]
    made = []
    for policy in (scripted(experts), scripted(failures)):
        found = rollout("shop", episodes, policy)
        for record in found:
            record.update(env="shop", split=split, success=record["reward"] >= 1.0)
        made.append(found)
    return made


def test_action_kinds_and_behaviour_counted_by_hand():
    assert [action_kind(a) for a in ("search[x]", "click[item 3]", "click[Buy Now]", "click[< prev]", "click[8]", None,
                                     "open door to kitchen")] == ["search", "item", "buy", "navigate", "option",
                                                                  "no action", "open"]
    expert, failed = records("test_unseen", 4, wrong_item=5)
    seen = behaviour(failed, {r["task_id"]: r for r in expert})
    # every failure opened a wrong result at turn 2 and then chose the expert's options and bought
    assert sum(seen["opened"].values()) == 4 and seen["bought"] == 4
    options = [len(ShopEnv().tasks[r["task_id"]].options) for r in failed]
    assert seen["options_before_buy"] == sum(options) / 4 and seen["options_right"] == 4
    lost = sum(f["reward"] < e["reward"] for f, e in zip(failed, expert))
    assert seen["departures"] == ({"item": lost} if lost else {})
    assert seen["invalid"] == 0.0 and seen["avg_reward"] == 100 * sum(r["reward"] for r in failed) / 4


def test_options_as_asked_by_hand():
    def episode(instruction, *selected):
        return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"Instruction: {instruction}\n[search]"}]
                + [{"role": "user", "content": f"Observation: You have selected {s}."} for s in selected]}
    asked = "i need a jacket in size x-large and color red, and price lower than 50.00 dollars"
    assert options_as_asked(episode(asked, "size x-large", "color red"))
    assert options_as_asked(episode(asked, "size large", "color red", "size x-large"))  # the last of a kind counts
    assert not options_as_asked(episode(asked, "size large", "color red"))  # "size large" is inside "size x-large"
    assert not options_as_asked(episode(asked, "color red"))  # a size never chosen
    assert options_as_asked(episode("find me some coffee in size 2 lb, with a price lower than 20.00 dollars", "size 2 lb"))


def test_turn_rewards_match_a_hand_computation():
    expert, failed = records("train", 2, wrong_item=5)
    tokenizer = build_tiny_tokenizer([json.dumps(r["messages"]) for r in expert + failed], vocab_size=300)
    vocab, a, beta = len(tokenizer), 50.0, 0.5

    class Uniform(torch.nn.Module):  # log p = -log V for every token
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, vocab))

    class FavoursPad(torch.nn.Module):  # logit log(a) on the pad token: every other token has p = 1 / (a + V - 1)
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, vocab)
            logits[..., tokenizer.pad_token_id] = math.log(a)
            return SimpleNamespace(logits=logits)

    messages = failed[0]["messages"]
    prompt, continuation = messages[:2], messages[2:]
    rewards = turn_rewards(Uniform(), FavoursPad(), tokenizer, prompt, continuation, beta)
    assistant = [j for j, m in enumerate(continuation) if m["role"] == "assistant"]
    assert list(rewards) == assistant
    for j in assistant:  # a turn's tokens: its reply and the end-of-turn token after it
        n_tokens = len(tokenizer(continuation[j]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
        assert rewards[j] == pytest.approx(beta * n_tokens * (math.log(a + vocab - 1) - math.log(vocab)), rel=1e-5)

    # with two real models, the turns sum to the DPO implicit reward of the whole side (dpo.py's mask)
    torch.manual_seed(0)
    policy, reference = build_tiny_model(tokenizer, hidden=32, layers=1, heads=2), build_tiny_model(tokenizer, hidden=32, layers=1, heads=2)
    pair = {"prompt": prompt, "chosen": expert[0]["messages"][2:], "rejected": continuation}
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokenize_pair(tokenizer, pair)
    with torch.no_grad():
        for side, ids, mask in (("chosen", chosen_ids, chosen_mask), ("rejected", rejected_ids, rejected_mask)):
            whole = beta * (sequence_logps(policy, [(ids, mask)], "cpu")[0] - sequence_logps(reference, [(ids, mask)], "cpu")[0])
            by_turn = turn_rewards(policy, reference, tokenizer, prompt, pair[side], beta)
            assert sum(by_turn.values()) == pytest.approx(whole.item(), abs=1e-4)


def test_pairs_are_sampled_per_kind_and_reproducibly():
    expert, failed = records("train", 6, wrong_item=5)
    pairs, _ = make_pairs(failed, expert, level="divergence")
    first, counts = sample_pairs(pairs, per_kind=2)
    again, _ = sample_pairs(pairs, per_kind=2)
    assert first == again and set(first) == {"item"} and counts == {"item": len(pairs)} and len(first["item"]) == 2
    assert all(at == 0 for _, at in first["item"])  # a divergence pair holds just the differing turn


def test_item_pairs_counted_by_hand():
    def turn(action, thought="t"):
        return {"role": "assistant", "content": f"Thought: {thought}\nAction: {action}"}
    seen = {"role": "user", "content": "Observation: a page"}
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "Instruction: i"}]
    sides = [([turn("click[item 2]")], [turn("click[item 1]")]),             # item 1 rejected
             ([turn("click[item 1]")], [turn("click[item 3]")]),             # item 1 chosen
             ([turn("search[a]"), seen, turn("click[item 1]"), seen, turn("click[buy now]")],  # a trajectory pair:
              [turn("search[a]"), seen, turn("click[item 4]")]),             # it differs at turn 2, item 1 chosen
             ([turn("search[a]")], [turn("search[b]")]),                     # not at a result
             ([turn("click[item 2]")], [turn("click[next >]")]),             # a result against paging: not both items
             ([turn("click[item 1]", "a")], [turn("click[item 1]", "b")])]   # the thoughts alone differ
    pairs = [{"prompt": prompt, "chosen": chosen, "rejected": rejected} for chosen, rejected in sides]
    assert item_pair_counts(pairs) == {"item_pairs": 3, "item_1_chosen": 2, "item_1_rejected": 1}
    assert item_pair_counts([]) == {"item_pairs": 0, "item_1_chosen": 0, "item_1_rejected": 0}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A small run folder shaped as loop.py writes it: results, eval episodes, expert episodes, pairs, two models."""
    run = tmp_path_factory.mktemp("report") / "run"
    (run / "eval").mkdir(parents=True)
    (run / "iter1").mkdir()
    rows = []
    for split in ("test_seen", "test_unseen"):
        expert, failed = records(split, 5, wrong_item=1)
        for name, found in (("expert", expert), ("sft", failed), ("eto-1", expert[:3] + failed[3:]),
                            ("sft-continued-1", failed)):
            (run / "eval" / f"{name}.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found))
            if name != "expert":
                rows.append({"stage": name, "split": split, "avg_reward": 100 * sum(r["reward"] for r in found) / 5,
                             "success_rate": 100 * sum(r["success"] for r in found) / 5, "n": 5, "seed": 0})
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expert, failed = records("train", 6, wrong_item=1)
    pairs, _ = make_pairs(failed, expert, level="trajectory")
    (run / "iter1" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tokenizer = build_tiny_tokenizer([json.dumps(r["messages"]) for r in expert + failed], vocab_size=300)
    torch.manual_seed(0)
    for folder in (run / "sft", run / "iter1" / "model"):
        build_tiny_model(tokenizer, hidden=32, layers=1, heads=2).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    (run / "iter1" / "model" / "args.json").write_text(json.dumps(
        {"args": {"model": str(run / "sft"), "pairs": str(run / "iter1" / "pairs.jsonl"), "beta": 0.5, "sft_weight": 1.0},
         "summary": {"stage": "dpo", "seconds": 3.0}}))
    done = subprocess.run([sys.executable, "research/report.py", "--run", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def test_the_page_holds_the_table_pairs_and_turn_rewards_all_escaped(run_folder):
    page = (run_folder / "report.html").read_text()
    assert "expert (ceiling)" in page and "<td>sft-continued-1</td>" in page and "data:image/png;base64," in page
    assert page.count("<div class='pair'>") == 1 and "class='agent diverge'" in page  # one kind: item, 2 pairs max
    assert "β·Δlog π =" in page and "beta = 0.5" in page
    assert "python dpo.py --model" in page and "--sft-weight 1.0" in page
    assert "&lt;script&gt;document.title" in page and "<script>" not in page  # model text is shown, never run
    assert (run_folder / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_folder.glob("*.tmp*"))


def test_the_page_in_a_real_browser(run_folder, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): the page was not opened in a browser")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"]
    url = "file://" + str(run_folder / "report.html")
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "<table>" in dom and 'class="pair"' in dom and "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image
    pixels = Image.open(shot).convert("L")
    histogram = pixels.histogram()  # a blank page is one grey level; this one has text, tables and a plot
    assert sum(count > 0 for count in histogram) > 20 and max(histogram) < 0.98 * sum(histogram)


def test_no_results_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/report.py", "--run", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no results.jsonl and no evaluations" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "report.html").exists()


def test_plot_has_a_line_per_method_and_a_panel_per_split(tmp_path):
    from research.report import plot_point, plot_results
    assert plot_point("eto-2") == [("ETO", 2)] and plot_point("sft-continued-1") == [("SFT continued (control)", 1)]
    assert plot_point("self-play-rft-eto") == [("self-play", 2)] and plot_point("best-of-4")[0][1] == 0
    assert plot_point("eto-divergence-nll-1") == [("ETO, divergence-nll", 1)]  # a loop.py --variants row
    assert plot_point("online-rl") == [("online RL", 1)]
    rows = [{"stage": stage, "split": split, "avg_reward": reward, "seed": seed}
            for stage, reward in [("sft", 60.0), ("eto-1", 65.0), ("rft", 62.0)] for seed in (0, 1)
            for split in ("test_seen", "test_unseen")]
    path = plot_results(rows, str(tmp_path / "results.png"))
    assert path and (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dev_rows = [{**row, "split": "dev"} for row in rows if row["split"] == "test_seen"]  # one panel: loop.py --eval-splits dev
    assert plot_results(dev_rows, str(tmp_path / "dev.png")) and (tmp_path / "dev.png").exists()
    assert not list(tmp_path.glob("*.tmp*"))


def test_mean_std_table_over_seeds():
    from research.report import mean_std_table
    rows = [{"stage": "sft", "split": split, "avg_reward": r, "success_rate": s, "seed": seed}
            for seed, r, s in [(0, 50.0, 10.0), (1, 60.0, 30.0)] for split in ("test_seen", "test_unseen")]
    table = mean_std_table(rows)
    assert table.startswith("mean +- std (population std) over seeds 0, 1")
    assert "| sft | 55.0 +- 5.0 | 20.0 +- 10.0 | 55.0 +- 5.0 | 20.0 +- 10.0 |" in table
    dev_only = mean_std_table([{**row, "split": "dev"} for row in rows if row["split"] == "test_seen"])
    assert "| model | dev reward | dev success |" in dev_only and "| sft | 55.0 +- 5.0 | 20.0 +- 10.0 |" in dev_only


def test_a_sampled_evaluation_is_rebuilt_as_best_of_n(tmp_path):
    """Best-of-N rows from the evaluation files alone: per task the best sample's reward, by hand."""
    from research.report import rows_from_evaluations
    (tmp_path / "eval").mkdir()
    samples = [("t0", 0.2), ("t0", 1.0), ("t1", 0.5), ("t1", 0.25)]  # best: 1.0 and 0.5 -> 75.0, 1 success of 2
    path = tmp_path / "eval" / "best-of-2.test_seen.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "reward": r, "messages": []}) + "\n" for t, r in samples))
    summary = {"avg_reward": 48.75, "success_rate": 25.0, "n": 4}  # what explore.py writes: the mean over samples
    (tmp_path / "eval" / "best-of-2.test_seen.jsonl.args.json").write_text(
        json.dumps({"summary": summary, "args": {"model": "m", "seed": 0, "samples": 2}}))
    (row,) = rows_from_evaluations(str(tmp_path))
    assert (row["stage"], row["avg_reward"], row["success_rate"], row["n"]) == ("best-of-2", 75.0, 50.0, 2)


def test_online_rls_evaluations_are_rebuilt_beside_the_loops(tmp_path):
    """A run's rows from its evaluation files: the loop's in eval/, online RL's in rl/ (research/online_rl.py),
    each with the summary its file holds; the loop's models first."""
    from research.report import rows_from_evaluations
    for folder, name, reward in (("eval", "sft.test_seen", 80.0), ("rl", "eval.test_seen", 82.5),
                                 ("rl", "eval.train", 90.0)):  # train is no evaluation split: left out
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.jsonl.args.json").write_text(json.dumps(
            {"summary": {"avg_reward": reward, "success_rate": 10.0, "n": 4}, "args": {"model": folder, "seed": 1}}))
    rows = rows_from_evaluations(str(tmp_path))
    assert [(r["stage"], r["split"], r["avg_reward"], r["model"]) for r in rows] == [
        ("sft", "test_seen", 80.0, "eval"), ("online-rl", "test_seen", 82.5, "rl")]


def test_the_report_adds_an_evaluation_its_results_lack(tmp_path):
    """A loop run's results.jsonl, then online RL evaluated into rl/: the page's rows gain online RL's, and
    the rows already there stay as they were."""
    from research.report import write_report
    (tmp_path / "eval").mkdir()
    (tmp_path / "rl").mkdir()
    loop_row = {"stage": "sft", "split": "test_seen", "avg_reward": 80.0, "success_rate": 10.0, "n": 4, "model": "m",
                "seed": 0}
    (tmp_path / "results.jsonl").write_text(json.dumps(loop_row) + "\n")
    (tmp_path / "eval" / "sft.test_seen.jsonl.args.json").write_text(json.dumps(
        {"summary": {"stage": "explore", "avg_reward": 79.0, "success_rate": 10.0, "n": 4}, "args": {"model": "m", "seed": 0}}))
    (tmp_path / "rl" / "eval.test_seen.jsonl.args.json").write_text(json.dumps(
        {"summary": {"stage": "explore", "avg_reward": 82.5, "success_rate": 25.0, "n": 4}, "args": {"model": "rl/model", "seed": 0}}))
    write_report(str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["avg_reward"]) for r in rows] == [("sft", 80.0), ("online-rl", 82.5)]
    assert "online-rl" in (tmp_path / "report.html").read_text()
