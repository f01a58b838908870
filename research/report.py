"""What a run learned, on one page: RUN/report.html, static and self-contained (opens from disk).

    python research/report.py --run runs/default       # loop.py and research/experiments.py write it at their end
    python research/report.py --run runs/seeds         # a research/experiments.py --seeds run: mean +- std, seed 0's models

Everything on the page comes from the run's own files: the results table (mean +- std over seeds) and
its plot (also written as RUN/results.png); per model, what it does on each test split (the action at
each turn, which result it opens, options chosen before buying, invalid actions) and where its failed
episodes first leave the expert's path (RUN/eval/expert.SPLIT.jsonl); a few of the first iteration's
pairs side by side, the first differing turn marked, each assistant turn with the DPO stage's implicit
reward beta * (log pi_theta - log pi_ref) after training; and the commands that made the run, from the
stages' args.json. Every string a model wrote is escaped: trajectories are untrusted text.
"""
import argparse
import base64
import glob
import html
import json
import os
import random
import re
import shlex
import statistics
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
from common import EVAL_SPLITS, InputError, format_table, read_jsonl, run_main, sequence_logps, tokenize_conversation, write_jsonl  # noqa: E402
from envs import parse_action  # noqa: E402
from pairs import first_differing_action  # noqa: E402

TURNS_SHOWN = 6  # turns of the per-turn action table
PAIRS_PER_KIND = 2


def esc(text):
    return html.escape(str(text), quote=True)


def action_kind(action):
    """A coarse name for an action: search / item / option / buy / navigate on the shop; else its first word."""
    if action is None:
        return "no action"
    if action.startswith("search["):
        return "search"
    if action.startswith("click["):
        argument = action[6:].rstrip("]").strip().lower()
        if argument.startswith("item "):
            return "item"
        if argument == "buy now":
            return "buy"
        return "navigate" if argument in ("next >", "< prev", "back to search") else "option"
    return action.split()[0] if action.split() else "no action"


def actions(record):
    return [parse_action(m["content"]) for m in record["messages"] if m["role"] == "assistant"]


def shown_action(action):
    """An action as the per-turn table shows it: search queries folded together."""
    if action is None:
        return "(no action)"
    return "search[…]" if action.startswith("search[") else action[:40]


# ---- tables and the plot ---------------------------------------------------------------------------
def splits_in(rows):
    """The evaluation splits the result rows hold, in EVAL_SPLITS order (loop.py --eval-splits chooses them)."""
    present = {row["split"] for row in rows}
    return [split for split in EVAL_SPLITS if split in present]


def mean_std_table(rows):
    """A markdown table: mean +- std over seeds of avg reward and success, per stage and split."""
    splits = splits_in(rows)
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    seeds = sorted({row["seed"] for row in rows})
    lines = [f"mean +- std (population std) over seeds {', '.join(map(str, seeds))}", "",
             "| model | " + " | ".join(f"{split} reward | {split} success" for split in splits) + " |",
             "|---|" + "---|---|" * len(splits)]
    for stage in stages:
        cells = []
        for split in splits:
            for field in ("avg_reward", "success_rate"):
                values = [row[field] for row in rows if row["stage"] == stage and row["split"] == split]
                cells.append(f"{statistics.mean(values):.1f} +- {statistics.pstdev(values):.1f}" if values else "-")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_point(stage):
    """(series, training round) of a result row for the plot; the SFT model starts the ETO, control and RFT lines."""
    if stage == "sft":
        return [("ETO", 0), ("SFT continued (control)", 0), ("RFT", 0), ("online RL", 0)]
    name, _, number = stage.rpartition("-")
    if name == "eto":
        return [("ETO", int(number))]
    if stage.startswith("eto-") and number.isdigit():  # a --variants entry: eto-NAME-i
        return [(f"ETO, {name[4:]}", int(number))]
    if stage == "online-rl":
        return [("online RL", 1)]
    if stage.startswith("sft-continued-"):
        return [("SFT continued (control)", int(stage.split("-")[2]))]
    if stage.startswith("best-of-"):
        return [(f"Best-of-{stage.split('-')[2]} (oracle pick, no training)", 0)]
    if stage == "self-play-rft":
        return [("self-play", 1), ("self-play control", 1)]
    rounds = {"rft": ("RFT", 1), "self-play-start": ("self-play", 0), "self-play-rft-eto": ("self-play", 2),
              "self-play-rft-control": ("self-play control", 2)}
    return [rounds[stage]] if stage in rounds else []


def plot_results(rows, path):
    """A PNG of avg reward (mean +- std over seeds) per training round per method, one panel per evaluation split."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    points = {}  # (split, series) -> {round: [reward per seed]}
    for row in rows:
        for series, round_ in plot_point(row["stage"]):
            points.setdefault((row["split"], series), {}).setdefault(round_, []).append(row["avg_reward"])
    splits = splits_in(rows)
    figure, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), sharey=True, squeeze=False)
    for axis, split in zip(axes[0], splits):
        for (point_split, series), by_round in points.items():
            if point_split != split or (len(by_round) == 1 and series in ("ETO", "SFT continued (control)", "RFT",
                                                                          "online RL")):
                continue  # the SFT point alone is not a line of its own
            rounds = sorted(by_round)
            axis.errorbar(rounds, [statistics.mean(by_round[r]) for r in rounds],
                          yerr=[statistics.pstdev(by_round[r]) for r in rounds], marker="o", capsize=3, label=series)
        axis.set_title(split)
        axis.set_xlabel("training rounds after the start model")
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("avg reward (x100), mean +- std over seeds")
    if any(axis.get_legend_handles_labels()[0] for axis in axes[0]):
        axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=80)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
    return path


# ---- what each model does ---------------------------------------------------------------------------
def first_departure(record, expert):
    """(turn number, the expert's action kind there) where an episode's actions first leave the expert's."""
    mine, theirs = actions(record), actions(expert)
    for turn, expert_action in enumerate(theirs, 1):
        if turn > len(mine) or mine[turn - 1] != expert_action:
            return turn, action_kind(expert_action)
    return len(theirs) + 1, "after the expert's end"


def options_as_asked(record):
    """The shop: whether every option the instruction asks for ("size 8", "color black") was the last one
    selected of its kind before the episode ended."""
    instruction = record["messages"][1]["content"].split("\n")[0]
    selected = dict(re.findall(r"^(?:Observation: )?You have selected (size|color) (.+)\.$", "\n".join(
        m["content"] for m in record["messages"] if m["role"] == "user"), flags=re.M))
    return all(f" {kind} {selected.get(kind)}" in instruction.replace(",", " ,") + " "
               for kind in ("size", "color") if f" {kind} " in instruction)


def behaviour(records, experts):
    """One model's habits on a split: counts a reader can check against the trajectories."""
    opened, options_before_buy, departures, options_right = Counter(), [], Counter(), 0
    for record in records:
        acts = actions(record)
        opened[next((a[6:-1] for a in acts if action_kind(a) == "item"), "none")] += 1
        if "click[buy now]" in acts:
            options_before_buy.append(sum(action_kind(a) == "option" for a in acts[:acts.index("click[buy now]")]))
            options_right += options_as_asked(record)
        expert = experts.get(record["task_id"])
        if expert is not None and record["reward"] < expert["reward"]:
            departures[first_departure(record, expert)[1]] += 1
    steps = sum(r["steps"] for r in records)
    return {"n": len(records), "avg_reward": 100 * statistics.mean(r["reward"] for r in records),
            "success": 100 * statistics.mean(r["reward"] >= 1.0 for r in records),
            "invalid": 100 * sum(r["invalid_actions"] for r in records) / max(steps, 1),
            "opened": opened, "bought": len(options_before_buy),
            "options_before_buy": statistics.mean(options_before_buy) if options_before_buy else 0.0,
            "options_right": options_right, "departures": departures}


def turn_actions(records, turn):
    """The three most common actions at a turn, with their share of the episodes that reached it."""
    at_turn = [shown_action(acts[turn - 1]) for acts in map(actions, records) if len(acts) >= turn]
    return [(action, 100 * count / len(at_turn)) for action, count in Counter(at_turn).most_common(3)]


# ---- what the preference moved ----------------------------------------------------------------------
def turn_rewards(policy, reference, tokenizer, prompt, continuation, beta, device="cpu"):
    """beta * (log pi_theta - log pi_ref) of each assistant turn of `continuation` after `prompt`, as
    {message index in continuation: reward}. The turn masks are dpo.py's (tokenize_conversation from
    that turn on, minus from the next one on), so the turns sum to the DPO implicit reward of the side."""
    messages = prompt + continuation
    turns = [i for i in range(len(prompt), len(messages)) if messages[i]["role"] == "assistant"]
    ids, _ = tokenize_conversation(tokenizer, messages, train_from=turns[0])
    masks = [tokenize_conversation(tokenizer, messages, train_from=i)[1] for i in turns] + [[0] * len(ids)]
    sequences = [(ids, [a - b for a, b in zip(masks[k], masks[k + 1])]) for k in range(len(turns))]
    policy_logps = sequence_logps(policy, sequences, device)[0]
    reference_logps = sequence_logps(reference, sequences, device)[0]
    rewards = (beta * (policy_logps - reference_logps)).tolist()
    return {i - len(prompt): reward for i, reward in zip(turns, rewards)}


def differing_turn(pair):
    """Index in the pair's continuations of the first turn whose action differs, or None (thoughts only)."""
    differ = first_differing_action(pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"])
    return differ - len(pair["prompt"]) if differ is not None else None


def sample_pairs(pairs, per_kind=PAIRS_PER_KIND, seed=0):
    """A few pairs per kind of the chosen side's first differing action, the same ones on every call."""
    by_kind = {}
    for pair in pairs:
        at = differing_turn(pair)
        kind = action_kind(parse_action(pair["chosen"][at]["content"])) if at is not None else "thought only"
        by_kind.setdefault(kind, []).append((pair, at))
    rng = random.Random(seed)
    return {kind: rng.sample(found, min(per_kind, len(found))) for kind, found in sorted(by_kind.items())}, \
        {kind: len(found) for kind, found in by_kind.items()}


def item_pair_counts(pairs):
    """The pairs that first differ at a result click on both sides ("item pairs"), and in how many of them
    `item 1` is the chosen click or the rejected one: what a set of pairs teaches about the first result."""
    counts = Counter({"item_pairs": 0, "item_1_chosen": 0, "item_1_rejected": 0})
    for pair in pairs:
        at = differing_turn(pair)
        if at is None:
            continue
        chosen, rejected = (parse_action(pair[side][at]["content"]) for side in ("chosen", "rejected"))
        if action_kind(chosen) == action_kind(rejected) == "item":
            counts["item_pairs"] += 1
            counts["item_1_chosen"] += chosen == "click[item 1]"
            counts["item_1_rejected"] += rejected == "click[item 1]"
    return dict(counts)


def pair_rewards(folder, pairs):
    """The implicit rewards of `pairs` under iteration 1's DPO model against its reference, or a reason why not."""
    args_file = os.path.join(folder, "iter1", "model", "args.json")
    if not os.path.exists(args_file):
        return None, "no DPO model in this run"
    with open(args_file) as f:
        dpo_args = json.load(f)["args"]
    if not os.path.isdir(dpo_args["model"]):
        return None, f"its reference {dpo_args['model']!r} is not here (run from the folder the run was made in)"
    import torch
    from common import load_model
    policy, tokenizer = load_model(os.path.join(folder, "iter1", "model"))
    reference, _ = load_model(dpo_args["model"])
    policy.eval(), reference.eval()
    with torch.no_grad():
        return [{side: turn_rewards(policy, reference, tokenizer, pair["prompt"], pair[side], dpo_args["beta"])
                 for side in ("chosen", "rejected")} for pair in pairs], f"beta = {dpo_args['beta']}"


# ---- the page ---------------------------------------------------------------------------------------
def html_table(header, rows):
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def results_section(rows, experts, png):
    """The results table (the expert's ceiling first) and the plot, inline."""
    seeds, splits = sorted({row["seed"] for row in rows}), splits_in(rows)

    def cell(values):
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.pstdev(values):.1f}" if len(values) > 1 else "")
    table = []
    if experts:
        table.append(["expert (ceiling)"] + [x for s in splits for x in (
            (cell([experts[s]["avg_reward"]]), cell([experts[s]["success"]])) if s in experts else ("-", "-"))])
    for stage in dict.fromkeys(row["stage"] for row in rows):
        cells = [esc(stage)]
        for split in splits:
            for field in ("avg_reward", "success_rate"):
                values = [r[field] for r in rows if r["stage"] == stage and r["split"] == split]
                cells.append(cell(values) if values else "-")
        table.append(cells)
    header = ["model"] + [f"{s} {what}" for s in splits for what in ("reward", "success %")]
    note = (f"Mean ± population std over seeds {', '.join(map(str, seeds))}." if len(seeds) > 1 else f"Seed {seeds[0]}.")
    with open(png, "rb") as f:
        image = base64.b64encode(f.read()).decode()
    return (f"<h2>Results</h2><p>{note} Reward: average final reward ×100; success: reward 1.0.</p>"
            f"{html_table(header, table)}<img alt='avg reward per training round' src='data:image/png;base64,{image}'>")


def behaviour_section(folder, stages):
    """Per test split: each model's habits beside the others, then its action at each turn."""
    parts = ["<h2>What each model does</h2>"]
    for split in EVAL_SPLITS:
        expert_file = os.path.join(folder, "eval", f"expert.{split}.jsonl")
        experts = {r["task_id"]: r for r in read_jsonl(expert_file)} if os.path.exists(expert_file) else {}
        records = {stage: read_jsonl(path) for stage in stages
                   for path in [os.path.join(folder, "eval", f"{stage}.{split}.jsonl")] if os.path.exists(path)}
        if not records:
            continue
        seen = {stage: behaviour(found, experts) for stage, found in records.items()}

        def counts(counter):
            return "<br>".join(f"{esc(k)}: {v}" for k, v in counter.most_common(4)) or "-"
        shop = any(r.get("env", "shop").partition(":")[0] == "shop" for found in records.values() for r in found)
        rows = [["avg reward / success %"] + [f"{b['avg_reward']:.1f} / {b['success']:.1f}" for b in seen.values()],
                ["invalid actions %"] + [f"{b['invalid']:.1f}" for b in seen.values()],
                ["episodes ended by"] + [counts(Counter(r["stop"] for r in found)) for found in records.values()]]
        if shop:  # the shop's own habits: which result, whether it bought, how many options first
            rows += [["result opened first"] + [counts(b["opened"]) for b in seen.values()],
                     ["episodes that bought"] + [f"{b['bought']} of {b['n']}" for b in seen.values()],
                     ["options chosen before buying (mean)"] + [f"{b['options_before_buy']:.2f}" for b in seen.values()],
                     ["bought with every option as asked"] + [f"{b['options_right']} of {b['bought']}" for b in seen.values()]]
        rows += [["failures first leave the expert's path at" if experts else "failures vs the expert: no expert file"]
                 + [counts(b["departures"]) for b in seen.values()]]
        per_turn = [[f"turn {turn}"] + ["<br>".join(f"{esc(a)} {share:.0f}%" for a, share in turn_actions(found, turn))
                                        for found in records.values()] for turn in range(1, TURNS_SHOWN + 1)
                    if any(len(actions(r)) >= turn for found in records.values() for r in found)]
        header = [""] + list(records)
        parts.append(f"<details open><summary>{split}</summary>{html_table(header, rows)}"
                     f"<h3>The action at each turn ({split}; share of the episodes that reached the turn)</h3>"
                     f"{html_table(header, per_turn)}</details>")
    return "".join(parts)


def render_side(title, messages, differ, rewards):
    out = [f"<div class='side'><h4>{esc(title)}</h4>"]
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            out.append(f"<pre class='obs'>{esc(message['content'])}</pre>")
            continue
        badge = f"<span class='reward'>β·Δlog π = {rewards[j]:+.2f}</span>" if rewards and j in rewards else ""
        marked = " diverge" if j == differ else ""
        out.append(f"<pre class='agent{marked}'>{esc(message['content'])}</pre>{badge}")
    return "".join(out) + "</div>"


def pairs_section(folder):
    path = os.path.join(folder, "iter1", "pairs.jsonl")
    if not os.path.exists(path):
        return "<h2>Pairs</h2><p>No pairs in this run.</p>"
    sampled, counts = sample_pairs(read_jsonl(path, ("task_id", "prompt", "chosen", "rejected")))
    flat = [(kind, pair, at) for kind, found in sampled.items() for pair, at in found]
    rewards, why = pair_rewards(folder, [pair for _, pair, _ in flat])
    parts = ["<h2>Pairs of iteration 1: chosen beside rejected</h2>",
             f"<p>Pairs in {esc(path)}: {sum(counts.values())}; by the kind of the chosen side's first differing "
             f"action: {esc(', '.join(f'{k} {v}' for k, v in sorted(counts.items())))}. Up to {PAIRS_PER_KIND} of each "
             "kind, drawn with a fixed seed. The first turn whose action differs is marked. Under each assistant turn: "
             f"the DPO model's implicit reward β·(log π_θ − log π_ref) for that turn after training ({esc(why)}).</p>"]
    for index, (kind, pair, at) in enumerate(flat):
        side_rewards = rewards[index] if rewards else {"chosen": None, "rejected": None}
        context = "".join(f"<pre class='{'agent' if m['role'] == 'assistant' else 'obs'}'>{esc(m['content'])}</pre>"
                          for m in pair["prompt"][-2:] if m["role"] != "system")
        parts.append(f"<div class='pair'><h3>{esc(pair['task_id'])} · {esc(kind)}</h3>"
                     f"<details><summary>the prompt's last turns</summary>{context}</details><div class='sides'>"
                     + render_side(f"chosen (reward {pair['chosen_reward']:.2f})", pair["chosen"], at, side_rewards["chosen"])
                     + render_side(f"rejected (reward {pair['rejected_reward']:.2f})", pair["rejected"], at,
                                   side_rewards["rejected"]) + "</div></div>")
    return "".join(parts)


def command_line(script, args):
    """A stage's command rebuilt from its recorded arguments (flags as argparse names them)."""
    words = ["python", script]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if name.endswith("_list") or value is None or value is False:
            continue
        words += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def commands_section(run):
    found = glob.glob(os.path.join(run, "**", "*args.json"), recursive=True)
    lines = []
    top_level = ("loop_args.json", "experiments_args.json", "levers_args.json")  # the command that ran the rest
    for path in sorted(found, key=lambda p: (os.path.basename(p) not in top_level, os.path.getmtime(p))):
        with open(path) as f:
            record = json.load(f)
        if os.path.basename(path) in top_level:
            script, args, seconds = os.path.basename(path).split("_")[0] + ".py", record, None
        else:
            script, args, seconds = record["summary"]["stage"] + ".py", record["args"], record["summary"].get("seconds")
        lines.append(esc(command_line(script, args)) + (f"   # {seconds:.0f} s" if seconds is not None else ""))
    return "<h2>The commands that made this run</h2><p>From each stage's args.json: the run's own command, then " \
           "every stage in the order they finished, with its seconds.</p>" \
           "<pre class='commands'>" + "\n".join(lines) + "</pre>"


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;font-size:14px}
th{background:#f0f0f0}pre{white-space:pre-wrap;margin:2px 0;padding:3px 6px;font-size:13px}
.obs{background:#f4f4f4;color:#555}.agent{background:#eef4ff}.diverge{background:#ffe2a8;border-left:4px solid #e08a00}
.sides{display:flex;gap:1em}.side{flex:1;min-width:0}.pair{border-top:2px solid #ddd;margin-top:1em}
.reward{font-size:12px;color:#064;margin-left:6px}.commands{background:#f8f8f8;font-size:12px}img{max-width:100%}"""


def build_page(run):
    rows = read_jsonl(os.path.join(run, "results.jsonl"), ("stage", "split", "avg_reward", "success_rate", "seed"))
    if not rows:
        raise InputError(f"{run}/results.jsonl holds no results")
    seeds = sorted({row["seed"] for row in rows})
    folder = run if os.path.isdir(os.path.join(run, "eval")) else os.path.join(run, f"seed{seeds[0]}")
    experts = {}
    for split in EVAL_SPLITS:
        path = os.path.join(folder, "eval", f"expert.{split}.jsonl")
        if os.path.exists(path):
            experts[split] = behaviour(read_jsonl(path), {})
    png = plot_results(rows, os.path.join(run, "results.png"))
    stages = list(dict.fromkeys(row["stage"] for row in rows if row["seed"] == seeds[0]))
    where = "" if folder == run else f"<p>Models, pairs and trajectories below: seed {seeds[0]} ({esc(folder)}).</p>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ETO run {esc(run)}</title>"
            f"<style>{STYLE}</style></head><body><h1>ETO run {esc(run)}</h1>"
            + results_section(rows, experts, png) + where + behaviour_section(folder, stages)
            + pairs_section(folder) + commands_section(run) + "</body></html>")


def rows_from_evaluations(run):
    """The result rows loop.py writes, rebuilt from RUN/eval/MODEL.SPLIT.jsonl.args.json (the evaluations'
    summaries): for a run whose stages were typed by hand. Models in the loop's order: sft, then per
    iteration ETO, its variants and the control; then the other methods (online RL's evaluations are
    RUN/rl/eval.SPLIT.jsonl, research/online_rl.py's folder)."""
    rows = []
    online = {"rl": "online-rl", "rl-long": "online-rl-long"}  # research/online_rl.py --out RUN/FOLDER
    for path in (glob.glob(os.path.join(run, "eval", "*.jsonl.args.json"))
                 + [p for folder in online for p in glob.glob(os.path.join(run, folder, "eval.*.jsonl.args.json"))]):
        stage, split = os.path.basename(path)[:-len(".jsonl.args.json")].rsplit(".", 1)
        folder = os.path.basename(os.path.dirname(path))
        stage = online.get(folder, stage)  # eval.SPLIT in an online-RL folder
        if stage == "expert" or split not in EVAL_SPLITS:
            continue
        with open(path) as f:
            record = json.load(f)
        summary, args = record["summary"], record["args"]
        row = {"stage": stage, "split": split, "avg_reward": summary["avg_reward"],
               "success_rate": summary["success_rate"], "n": summary["n"], "model": args["model"], "seed": args["seed"]}
        if args.get("samples", 1) > 1:  # Best-of-N: per task, the best of its samples by the env's reward
            best = {}
            for trajectory in read_jsonl(path[:-len(".args.json")], ("task_id", "reward")):
                best[trajectory["task_id"]] = max(best.get(trajectory["task_id"], 0.0), trajectory["reward"])
            row.update(avg_reward=round(100 * sum(best.values()) / len(best), 2), n=len(best),
                       success_rate=round(100 * sum(r >= 1.0 for r in best.values()) / len(best), 2))
        rows.append(row)

    def order(row):  # sft, then eto-i, eto-VARIANT-i, sft-continued-i by iteration, then other methods
        name, _, number = row["stage"].rpartition("-")
        iteration = int(number) if number.isdigit() else 0 if row["stage"] == "sft" else 10 ** 6
        kind = 0 if row["stage"] == "sft" else 2 if name == "sft-continued" else 1
        return iteration, kind, row["stage"], EVAL_SPLITS.index(row["split"])
    return sorted(rows, key=order)


def write_report(run, out=None):
    """Write the page (by rename: a half-written page never sits at OUT); return its path. A run folder
    with evaluations but no results.jsonl (its stages run by hand) gets one first, and its table printed;
    one whose results.jsonl lacks an evaluation's row (online RL's, run after the loop) gets that row added."""
    out = out or os.path.join(run, "report.html")
    results = os.path.join(run, "results.jsonl")
    rows = read_jsonl(results, ("stage", "split", "seed")) if os.path.exists(results) else []
    have = {(row["stage"], row["split"], row["seed"]) for row in rows}
    missing = [row for row in rows_from_evaluations(run) if (row["stage"], row["split"], row["seed"]) not in have]
    if not rows and not missing and not os.path.exists(results):
        raise InputError(f"{run}: no results.jsonl and no evaluations (eval/MODEL.SPLIT.jsonl.args.json) here; "
                         f"run loop.py with --run {run}, or its stages, first")
    if missing:
        write_jsonl(results, rows + missing)
        print(format_table(rows + missing))
    page = build_page(run)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(out + ".tmp", out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a loop.py or experiments.py run folder")
    parser.add_argument("--out", default=None, help="the page (default RUN/report.html)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args()
    out = write_report(args.run, args.out)
    print(json.dumps({"stage": "report", "run": args.run, "out": out, "plot": os.path.join(args.run, "results.png")}))


if __name__ == "__main__":
    run_main(main)
