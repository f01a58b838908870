"""Tables on the pages, made from the result files the repository keeps: no figure typed by hand.

    python research/pages.py --collect results/default runs/default runs/seed1 runs/seed2   # keep a run's files
    python research/pages.py            # rewrite every table between its markers in README.md and docs/*.md
    python research/pages.py --check    # exit 1, naming the table, where a page differs from its data

`--collect DEST RUN...` copies each run's small files into DEST/seedS/ (no models, no trajectories):
every evaluation's result row (results.jsonl, as research/report.py rebuilds it: the loop's models and any
other method run into the same folder, such as RFT), rl/results.jsonl and rl/log.jsonl where online RL
ran, loop_args.json, every stage's summary with its command (summaries.jsonl), what each model does
(behaviour.jsonl) and the CPU it ran on. A page holds a table as

    <!-- table:NAME -->
    ...generated lines...
    <!-- /table:NAME -->

and TABLES below says how each NAME is made from which folder. tests/test_docs.py fails when a page's
table differs from what its data gives, or when a page names a table whose data is missing.
"""
import argparse
import glob
import json
import os
import random
import re
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)  # the stages live one folder up
from common import EVAL_SPLITS, InputError, format_table, read_jsonl, run_main, write_jsonl  # noqa: E402

PAGES = ("README.md", "docs/*.md", "exercises/*.md", "research/README.md")
NAMES = {"sft": "SFT", "eto-1": "ETO", "sft-continued-1": "control: NLL on ETO's chosen side",
         "eto-divergence-nll-1": "divergence pairs + NLL (`--variants divergence-nll`)",
         "online-rl": "online RL (`research/online_rl.py`)", "best-of-4": "Best-of-4 (the best of 4 samples by the env's reward)", "online-rl-long": "online RL, 4000 episodes", "rft": "RFT (`research/experiments.py --methods rft`)", "failure-sft": "failure-guided SFT (`--methods failure-sft`)", "eto-2": "ETO, iteration 2", "sft-continued-2": "control, iteration 2"}


# ---- collecting a run's small files ---------------------------------------------------------------
def cpu_kind():
    """'AMD EPYC, AVX-512' or similar: the CPU's name and vector width from the Linux CPU table where there is
    one; elsewhere (macOS, Windows) the name `platform` gives."""
    import platform
    cpu_table = "/proc/cpuinfo"  # Linux only
    if not os.path.exists(cpu_table):
        return platform.processor() or platform.machine() or "unknown"
    with open(cpu_table) as f:
        info = f.read()
    model = re.search(r"model name\s*:\s*(.*)", info)
    isa = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
    return f"{model.group(1).strip() if model else 'unknown'}, {isa}"


def collect(dest, runs):
    for run in runs:  # every run checked before anything is copied
        if not any(os.path.exists(os.path.join(run, name)) for name in ("settings.json", "loop_args.json")):
            raise InputError(f"{run}: not a finished run (no loop_args.json from loop.py, no settings.json from "
                             f"research/smol.sh)")
    for run in runs:
        if os.path.exists(os.path.join(run, "settings.json")):  # a research/smol.sh run: its settings, stages, table
            os.makedirs(dest, exist_ok=True)
            for name in ("settings.json", "log.jsonl", "table.jsonl"):
                shutil.copy(os.path.join(run, name), os.path.join(dest, name))
            with open(os.path.join(dest, "host.json"), "w") as f:
                json.dump({"cpu": cpu_kind()}, f)
            continue
        with open(os.path.join(run, "loop_args.json")) as f:
            seed = json.load(f)["seed"]
        folder = os.path.join(dest, f"seed{seed}")
        os.makedirs(folder, exist_ok=True)
        from research.report import rows_from_evaluations
        write_jsonl(os.path.join(folder, "results.jsonl"), rows_from_evaluations(run))  # every model evaluated
        for name in ("loop_args.json", "rl/results.jsonl", "rl/log.jsonl", "rl-long/results.jsonl", "rl-long/log.jsonl",
                     "rl-lr1e-4/results.jsonl", "rl-lr1e-4/log.jsonl"):
            if os.path.exists(os.path.join(run, name)):
                shutil.copy(os.path.join(run, name), os.path.join(folder, name.replace("/", "-")))
        summaries = []
        for path in sorted(glob.glob(os.path.join(run, "**", "*args.json"), recursive=True)):
            with open(path) as f:
                record = json.load(f)
            if "summary" in record:
                summaries.append({"file": os.path.relpath(path, run), "command": record.get("command"),
                                  "cpu_kernels": record.get("cpu_kernels"), "summary": record["summary"]})
        write_jsonl(os.path.join(folder, "summaries.jsonl"), summaries)
        write_jsonl(os.path.join(folder, "behaviour.jsonl"), behaviour_rows(run))
        host = {"cpu": cpu_kind()}
        loop_log = run.rstrip("/") + ".loop.log"  # research/default_seeds.sh's log of the plain `python loop.py`
        if os.path.exists(loop_log):
            lines = [line for line in open(loop_log) if line.startswith('{"stage": "loop"')]
            host["loop_seconds"] = json.loads(lines[-1])["seconds"]
            host["loop_log"] = os.path.basename(loop_log)
        with open(os.path.join(folder, "host.json"), "w") as f:
            json.dump(host, f)


def bought_result(actions):
    """(pages turned, the result clicked) of the last result opened before `click[buy now]`, or None."""
    if "click[buy now]" not in actions:
        return None
    before = actions[:actions.index("click[buy now]")]
    items = [i for i, action in enumerate(before) if action and action.startswith("click[item ")]
    if not items:
        return None
    return sum(action == "click[next >]" for action in before[:items[-1]]), before[items[-1]]


def behaviour_rows(run):
    """Per evaluated model and split: which result it opens first, how often it buys the expert's result,
    its invalid actions: what research/report.py shows, kept small enough for the repository."""
    from research.report import actions, behaviour
    rows = []
    files = (glob.glob(os.path.join(run, "eval", "*.jsonl")) + glob.glob(os.path.join(run, "rl", "eval.*.jsonl"))
             + glob.glob(os.path.join(run, "rl-long", "eval.*.jsonl")))
    for path in sorted(files):
        name = os.path.basename(path)[:-len(".jsonl")]
        if "/rl/" in path or "/rl-long/" in path:
            stage, split = ("online-rl" if "/rl/" in path else "online-rl-long"), name.split(".", 1)[1]
        else:
            stage, split = name.rsplit(".", 1)
        if stage == "expert":
            continue
        expert_path = os.path.join(run, "eval", f"expert.{split}.jsonl")
        experts = {r["task_id"]: r for r in read_jsonl(expert_path)} if os.path.exists(expert_path) else {}
        records = read_jsonl(path)
        shown = behaviour(records, experts)
        same = sum(bought_result(actions(r)) is not None and task_bought(experts, r) == bought_result(actions(r))
                   for r in records)
        rows.append({"stage": stage, "split": split, "n": shown["n"], "opened_first": dict(shown["opened"]),
                     "bought_experts_result": same, "invalid_action_pct": round(shown["invalid"], 2)})
    return rows


def task_bought(experts, record):
    from research.report import actions
    expert = experts.get(record["task_id"])
    return bought_result(actions(expert)) if expert else None


# ---- tables ---------------------------------------------------------------------------------------
def seed_rows(folder):
    """{seed: rows} of a collected folder: the loop's rows and online RL's."""
    by_seed = {}
    for seed_folder in sorted(glob.glob(os.path.join(HERE, folder, "seed*"))):
        rows = read_jsonl(os.path.join(seed_folder, "results.jsonl"), ("stage", "split"))
        if os.path.exists(os.path.join(seed_folder, "rl-results.jsonl")):  # where results.jsonl lacks them
            have = {(row["stage"], row["split"]) for row in rows}
            rows += [row for row in read_jsonl(os.path.join(seed_folder, "rl-results.jsonl"), ("stage", "split"))
                     if (row["stage"], row["split"]) not in have]
        by_seed[int(os.path.basename(seed_folder)[4:])] = rows
    if not by_seed:
        raise InputError(f"{folder}: no collected run (seed*/results.jsonl); run research/pages.py --collect")
    return by_seed


def value(rows, stage, split, key="avg_reward"):
    found = [row[key] for row in rows if row["stage"] == stage and row["split"] == split]
    return found[0] if found else None


def mean_std(values):
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def ran(by_seed, stages):
    """The stages that some seed's results hold (a method not run is left out of a table, not shown empty)."""
    return [stage for stage in stages if any(row["stage"] == stage for rows in by_seed.values() for row in rows)]


def seeds_table(folder, stages):
    """Mean ± std over seeds of reward (and success) per split, then each seed's reward."""
    by_seed = seed_rows(folder)
    splits = [s for s in EVAL_SPLITS if any(value(rows, stages[0], s) is not None for rows in by_seed.values())]
    head = "| model | " + " | ".join(f"{s} reward | {s} success" for s in splits) + " | " + \
        " | ".join(f"{s} reward, seeds {', '.join(map(str, by_seed))}" for s in splits) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(splits))]
    for stage in ran(by_seed, stages):
        cells = []
        for split in splits:
            for key in ("avg_reward", "success_rate"):
                got = [value(rows, stage, split, key) for rows in by_seed.values()]
                cells.append(mean_std(got) if None not in got else "–")
        for split in splits:
            got = [value(rows, stage, split) for rows in by_seed.values()]
            cells.append(", ".join("–" if v is None else f"{v:.1f}" for v in got))
        lines.append(f"| {NAMES.get(stage, stage)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short_seeds_table(folder, stages):
    """Reward per split, mean ± std over seeds: the README's table."""
    by_seed = seed_rows(folder)
    lines = ["| method | " + " | ".join(f"{s} reward" for s in EVAL_SPLITS) + " |", "|---|" + "---|" * len(EVAL_SPLITS)]
    for stage in ran(by_seed, stages):
        cells = []
        for split in EVAL_SPLITS:
            got = [value(rows, stage, split) for rows in by_seed.values()]
            cells.append(mean_std(got) if None not in got else "–")
        lines.append(f"| {NAMES.get(stage, stage)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(folder, first, second, splits=EVAL_SPLITS):
    """'first − second' per split over seeds: mean ± std of the per-seed differences, and each seed's."""
    by_seed = seed_rows(folder)
    parts = []
    for split in splits:
        diffs = [value(rows, first, split) - value(rows, second, split) for rows in by_seed.values()
                 if value(rows, first, split) is not None and value(rows, second, split) is not None]
        if diffs:
            shown = [round(d, 1) + 0.0 for d in diffs]  # + 0.0: no "-0.0"
            parts.append(f"{split} {round(statistics.mean(diffs), 1) + 0.0:+.1f} ± {statistics.pstdev(diffs):.1f} "
                         f"({', '.join(f'{d:+.1f}' for d in shown)})")
    return "; ".join(parts)


def printed_table(folder, seed=0):
    """The table `python loop.py` prints for that seed: SFT, ETO and the control on the two test splits."""
    rows = [row for row in seed_rows(folder)[seed] if row["split"] in ("test_seen", "test_unseen")
            and row["stage"] in ("sft", "eto-1", "sft-continued-1")]
    return "\n".join("    " + line for line in format_table(rows).splitlines())


def loop_time(folder, seed=0):
    """`python loop.py`'s own time for that seed, from scratch, and the CPU it ran on (the loop's summary line)."""
    with open(os.path.join(HERE, folder, f"seed{seed}", "host.json")) as f:
        host = json.load(f)
    return (f"`python loop.py` took **{host['loop_seconds'] / 60:.1f} minutes** ({host['loop_seconds']:.0f} s by the "
            f"loop's last line, from scratch, alone on 2 cores of an {host['cpu']} host). Nothing is downloaded.")


LOOP_STAGES = [("expert.jsonl", "the expert on the train tasks (no model)"), ("sft", "SFT"),
               ("eval/expert.test_seen.jsonl", "the expert on test_seen"), ("eval/expert.test_unseen.jsonl", "the expert on test_unseen"),
               ("eval/sft.test_seen.jsonl", "SFT on test_seen"), ("eval/sft.test_unseen.jsonl", "SFT on test_unseen"),
               ("iter1/explore.jsonl", "exploring the train tasks"), ("iter1/pairs.jsonl", "pairs"),
               ("iter1/model", "DPO (ETO)"), ("iter1/control", "the control"),
               ("eval/eto-1.test_seen.jsonl", "ETO on test_seen"), ("eval/eto-1.test_unseen.jsonl", "ETO on test_unseen"),
               ("eval/sft-continued-1.test_seen.jsonl", "the control on test_seen"),
               ("eval/sft-continued-1.test_unseen.jsonl", "the control on test_unseen")]


def stage_times(folder, seed=0):
    """Each stage of `python loop.py`: its own seconds (its summary's), its script and what it worked on."""
    summaries = {}
    for record in read_jsonl(os.path.join(HERE, folder, f"seed{seed}", "summaries.jsonl"), ("file", "summary")):
        summaries[record["file"].replace("/args.json", "").replace(".args.json", "")] = record["summary"]
    rows = []
    for path, what in LOOP_STAGES:
        summary = summaries[path]
        work = {"sft": lambda x: f"{x.get('examples')} trajectories", "dpo": lambda x: f"{x.get('pairs')} pairs",
                "pairs": lambda x: f"{x.get('pairs')} pairs", "explore": lambda x: f"{x.get('n')} episodes"}[summary["stage"]]
        rows.append([what, f"`{summary['stage']}.py`", work(summary), f"{summary['seconds']:.1f}"])
    return markdown(["stage (seed 0)", "script", "work", "seconds"], rows)


def rl_curve(folder, name="rl-log.jsonl", seed=0, every=5):
    """The samples' reward, invalid actions and clip fraction every few iterations of one seed's online RL."""
    log = read_jsonl(os.path.join(HERE, folder, f"seed{seed}", name), ("iteration",))
    shown = [line for line in log if line["iteration"] % every == 0 or line["iteration"] == 1]
    lines = ["| iteration | " + " | ".join(str(line["iteration"]) for line in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for key, label, scale in (("reward", "samples' reward", 1), ("invalid_action_rate", "invalid actions %", 100),
                              ("clip_fraction", "clipped tokens %", 100), ("distinct_replies", "distinct replies", 1)):
        lines.append(f"| {label} | " + " | ".join(f"{line[key] * scale:.1f}" if scale != 1 or isinstance(line[key], float)
                                                 else str(line[key]) for line in shown) + " |")
    return "\n".join(lines)


def rl_budget(folder):
    """Online RL's budget per seed: iterations, episodes sampled, training seconds."""
    lines = []
    for seed_folder in sorted(glob.glob(os.path.join(HERE, folder, "seed*"))):
        log = read_jsonl(os.path.join(seed_folder, "rl-log.jsonl"), ("iteration",))
        lines.append(f"seed {os.path.basename(seed_folder)[4:]}: {len(log)} iterations, "
                     f"{sum(line['episodes'] for line in log)} episodes, {sum(line['seconds'] for line in log):.0f} s")
    return "; ".join(lines)


def sweep_table(folder):
    """The dev search for the paper's ETO at the tiny model's size: each DPO setting's dev reward / success
    per seed (loop runs' own ETO and control rows, and research/sweep.py's rows), beside SFT's."""
    cells = {}  # setting -> {seed: "reward / success"}

    def put(setting, seed, row):
        cells.setdefault(setting, {})[seed] = f"{row['avg_reward']:.1f} / {row['success_rate']:.1f}"
    seeds = []
    for seed_folder in sorted(glob.glob(os.path.join(HERE, folder, "seed*"))):
        seed = int(os.path.basename(seed_folder)[4:])
        seeds.append(seed)
        with open(os.path.join(seed_folder, "loop_args.json")) as f:
            loop_args = json.load(f)
        loop_setting = f"lr={loop_args['dpo_lr']:g},beta={loop_args['beta']:g},epochs={loop_args['dpo_epochs']}," \
                       f"batch_size={loop_args['dpo_batch_size']}"
        for row in read_jsonl(os.path.join(seed_folder, "results.jsonl"), ("stage",)):
            if row["stage"] == "sft":
                put("SFT", seed, row)
            elif row["stage"].startswith("eto-"):
                put(loop_setting + ("" if row["stage"] == "eto-1" else f", after iteration {row['stage'][4:]}"), seed, row)
            elif row["stage"].startswith("sft-continued-"):
                put(loop_setting + f", control{'' if row['stage'] == 'sft-continued-1' else ' after iteration 2'}", seed, row)
        for row in read_jsonl(os.path.join(seed_folder, "sweep.jsonl"), ("setting",)):
            put(row["setting"], seed, row)
    def shown(setting):  # 'lr=3e-5,beta=1,epochs=1,batch_size=8, control' -> '--lr 3e-05 --beta 1 ... (control)'
        if setting == "SFT":
            return "SFT", (0,)
        flags, _, note = setting.partition(", ")
        values = dict(part.split("=") for part in flags.split(","))
        key = tuple(float(values[name]) for name in ("lr", "beta", "epochs", "batch_size"))
        text = " ".join(f"--{name.replace('_', '-')} {float(values[name]):g}" for name in ("lr", "beta", "epochs", "batch_size"))
        return f"`{text}`" + (f" ({note})" if note else ""), (1, *key, note)
    merged = {}
    for setting, by_seed in cells.items():
        text, key = shown(setting)
        merged.setdefault((key, text), {}).update(by_seed)
    lines = ["| DPO setting (dpo.py flags) | " + " | ".join(f"seed {s}: dev reward / success" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for (_, text), by_seed in sorted(merged.items()):
        lines.append(f"| {text} | " + " | ".join(by_seed.get(s, "–") for s in seeds) + " |")
    return "\n".join(lines)


def behaviour_table(folder, stages, split):
    """What each model does on a split, mean over seeds: which result it opens first, how often it buys the
    expert's result, its invalid actions."""
    rows = {}
    seeds = sorted(glob.glob(os.path.join(HERE, folder, "seed*")))
    for seed_folder in seeds:
        for row in read_jsonl(os.path.join(seed_folder, "behaviour.jsonl"), ("stage",)):
            if row["split"] == split:
                rows.setdefault(row["stage"], []).append(row)
    lines = [f"| model ({split}, mean over {len(seeds)} seeds) | opens item 1 first | opens item 2 first | "
             "buys the expert's result | invalid actions |", "|---|---|---|---|---|"]
    for stage in [stage for stage in stages if stage in rows]:
        got = rows.get(stage, [])
        if len(got) != len(seeds):
            continue
        n = got[0]["n"]

        def mean(values):
            return statistics.mean(values)
        lines.append(f"| {NAMES.get(stage, stage)} | {mean([r['opened_first'].get('item 1', 0) for r in got]):.1f} of {n} | "
                     f"{mean([r['opened_first'].get('item 2', 0) for r in got]):.1f} | "
                     f"{mean([r['bought_experts_result'] for r in got]):.1f} | "
                     f"{mean([r['invalid_action_pct'] for r in got]):.1f}% |")
    return "\n".join(lines)


KERNEL_SETS = {"all": "the three pinned variables", "all+cbwr-avx2": "the three + MKL_CBWR=AVX2",
               "all+cbwr-avx2-strict": "the three + MKL_CBWR=AVX2,STRICT",
               "all+cbwr-compatible": "the three + MKL_CBWR=COMPATIBLE", "all-1-thread": "the three, 1 thread",
               "all-4-threads": "the three, 4 threads", "aten": "ATEN_CPU_CAPABILITY=avx2 alone",
               "aten-default": "ATEN_CPU_CAPABILITY=default alone",
               "aten_mkl": "ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS", "aten_onednn": "ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA",
               "mkl_onednn": "MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA", "none": "none (the CPU's own kernels)"}


def kernels_table(folder="results/kernels"):
    """research/kernels.sh on each host (a file each): which settings give which SFT weights, byte for byte,
    one letter per distinct sha1 across every host."""
    hosts = {}
    for name in sorted(os.listdir(os.path.join(HERE, folder))):
        if not name.endswith(".txt") or name == "inputs.txt":
            continue
        with open(os.path.join(HERE, folder, name)) as f:
            lines = f.read().splitlines()
        cpu = lines[0].lstrip("# ").split(" (")[0].split(", 2 cores")[0]
        hosts[cpu] = {line.split()[1]: line.split()[0] for line in lines[1:] if line.strip()}
    letters = {}
    for setting in KERNEL_SETS:
        for hashes in hosts.values():
            if setting in hashes:
                letters.setdefault(hashes[setting], "ABCDEFGHIJKLMNOP"[len(letters)])
    lines = ["| `sft.py` under | " + " | ".join(hosts) + " |", "|---|" + "---|" * len(hosts)]
    for setting, label in KERNEL_SETS.items():
        if any(setting in hashes for hashes in hosts.values()):
            lines.append(f"| {label} | " + " | ".join(letters.get(hashes.get(setting), "–") for hashes in hosts.values()) + " |")
    return "\n".join(lines)


def arithmetic_rows(name, folder="results/arithmetic"):
    """(settings, rows) of research/arithmetic.py's NAME.jsonl."""
    lines = [json.loads(line) for line in open(os.path.join(HERE, folder, f"{name}.jsonl"))]
    return lines[0]["settings"], lines[1:]


def spreads(rows, key="dev_reward"):
    """(spread over seeds, spread over perturbations): the population std across seeds within each perturbation, averaged
    over perturbations; the std across perturbations within each seed, averaged over seeds."""
    perturbations = list(dict.fromkeys(r["perturbation"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    over_seeds = [statistics.pstdev([r[key] for r in rows if r["perturbation"] == p]) for p in perturbations]
    over_perturbations = [statistics.pstdev([r[key] for r in rows if r["seed"] == s]) for s in seeds]
    return statistics.mean(over_seeds), statistics.mean(over_perturbations)  # a single seed's spread is 0


def arithmetic_table(name):
    """SFT's dev reward (train loss) per perturbation and seed, with the mean and std over seeds."""
    _, rows = arithmetic_rows(name)
    seeds = sorted({r["seed"] for r in rows})
    letters = {}
    for r in rows:
        letters.setdefault(r["weights_sha1"], str(len(letters) + 1))
    lines = ["| arithmetic | " + " | ".join(f"seed {s}: dev reward (train loss)" for s in seeds)
             + " | mean ± std over seeds |", "|---|" + "---|" * (len(seeds) + 1)]
    for perturbation in dict.fromkeys(r["perturbation"] for r in rows):
        got = {r["seed"]: r for r in rows if r["perturbation"] == perturbation}
        cells = [f"{got[s]['dev_reward']:.1f} ({got[s]['train_loss']:.3f})" for s in seeds]
        lines.append(f"| {perturbation} | " + " | ".join(cells) + f" | {mean_std([got[s]['dev_reward'] for s in seeds])} |")
    return "\n".join(lines)


def arithmetic_summary(names):
    """Per SFT recipe: dev reward over every run, its two spreads (where it has 2 seeds or more), its lowest
    run, success, and how often the first result opened follows the price."""
    lines = ["| SFT recipe | runs | dev reward, all runs | spread over seeds | spread over arithmetic | lowest run | "
             "success | first click within the cap when item 1 is over it |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        settings, rows = arithmetic_rows(name)
        recipe = settings["recipe"]
        lr = f"{recipe['sft_lr']:.0e}".replace("e-0", "e-")  # 3e-3, as the flags are written
        label = (f"{recipe['sft_epochs']} epochs of batch {recipe['sft_batch_size']}, lr {lr}, warm-up "
                 f"{recipe.get('sft_warmup_ratio') or 0.03:g}" + (" (the lecture recipe)" if name == "lecture" else ""))
        seeds, perturbations = {r["seed"] for r in rows}, {r["perturbation"] for r in rows}
        over_seeds, over_perturbations = spreads(rows)
        follows, over_cap = sum(r["first_click_follows_price"] for r in rows), sum(r["item_1_over_cap"] for r in rows)
        lines.append(f"| {label} | {len(perturbations)} settings × {len(seeds)} seed{'s' if len(seeds) > 1 else ''} | "
                     f"{mean_std([r['dev_reward'] for r in rows])} | "
                     f"{f'{over_seeds:.1f}' if len(seeds) > 1 else '–'} | "
                     f"{over_perturbations:.1f} | {min(r['dev_reward'] for r in rows):.1f} | "
                     f"{mean_std([r['dev_success'] for r in rows])}% | {100 * follows / max(over_cap, 1):.0f}% "
                     f"({follows} of {over_cap}) |")
    return "\n".join(lines)


def arithmetic_verdict(name):
    """One sentence: the recipe's spread over arithmetic against its spread over seeds, whichever way it falls."""
    _, rows = arithmetic_rows(name)
    over_seeds, over_arithmetic = spreads(rows)
    relation = "no larger than" if over_arithmetic <= over_seeds else "larger than"
    rewards = [r["dev_reward"] for r in rows]
    sentence = (f"Over {len({r['perturbation'] for r in rows})} arithmetic settings × {len({r['seed'] for r in rows})} "
                f"seeds, the lecture recipe's spread over arithmetic ({over_arithmetic:.2f}) is {relation} its spread "
                f"over seeds ({over_seeds:.2f}); its dev reward runs from {min(rewards):.1f} to {max(rewards):.1f}.")
    if over_arithmetic <= over_seeds:
        return sentence
    share = relabelled_share(rows, over_arithmetic - over_seeds)
    return (sentence + f" Its runs, dealt at random to the same grid of settings and seeds ({RELABELLINGS:,} "
            f"times), give a spread over arithmetic larger than over seeds by at least as much in {100 * share:.0f}% "
            "of the deals: with this few runs the two spreads are not told apart, so the range of all the runs is "
            "the range to expect.")


RELABELLINGS = 10000


def relabelled_share(rows, gap, key="dev_reward"):
    """The share of random relabellings of `rows` (their values dealt to the same perturbation × seed grid,
    a fixed-seed permutation test) whose spread over perturbations exceeds that over seeds by at least `gap`."""
    values, rng, hits = [r[key] for r in rows], random.Random(0), 0
    for _ in range(RELABELLINGS):
        rng.shuffle(values)
        over_seeds, over_perturbations = spreads([dict(r, **{key: v}) for r, v in zip(rows, values)], key)
        hits += over_perturbations - over_seeds >= gap - 1e-9
    return hits / RELABELLINGS


def arithmetic_curves(names, seed=0):
    """SFT's training loss at the end of each epoch (the last tenth of its steps), per recipe and arithmetic
    setting, for one seed: where two runs of one recipe part."""
    lines = ["| SFT recipe | arithmetic | training loss at the end of each epoch | dev reward |", "|---|---|---|---|"]
    for name in names:
        settings, rows = arithmetic_rows(name)
        recipe = settings["recipe"]
        for row in (r for r in rows if r["seed"] == seed):
            curve = " → ".join(f"{epoch[-1]:.3f}" for epoch in row["loss_curve"] if epoch)
            lines.append(f"| {recipe['sft_epochs']} epochs, lr {recipe['sft_lr']:.0e} | {row['perturbation']} | "
                         f"{curve} | {row['dev_reward']:.1f} |".replace("e-03", "e-3"))
    return "\n".join(lines)


def arithmetic_range(name):
    """One sentence: SFT's dev reward over every arithmetic setting and seed of NAME's study."""
    _, rows = arithmetic_rows(name)
    rewards = [r["dev_reward"] for r in rows]
    settings = len({r["perturbation"] for r in rows})
    return (f"SFT's dev reward over {len(rows)} runs ({settings} arithmetic settings × {len({r['seed'] for r in rows})} "
            f"seeds): {min(rewards):.1f} to {max(rewards):.1f}, mean {mean_std(rewards)}.")


DEFAULT = "results/default"
MAIN_STAGES = ["sft", "eto-1", "sft-continued-1", "eto-divergence-nll-1", "rft", "failure-sft", "best-of-4", "online-rl"]
TRAINED = [stage for stage in MAIN_STAGES if stage != "best-of-4"]  # models; Best-of-N is sampling, not a model
def smol_table(folder):
    """A research/smol.sh run: per model, dev reward and success, what it opens first, invalid actions."""
    with open(os.path.join(HERE, folder, "settings.json")) as f:
        settings = json.load(f)
    dev, seed = settings["dev"], settings["seed"]
    rows = []
    for row in read_jsonl(os.path.join(HERE, folder, "table.jsonl"), ("model", "opened")):
        opened = row["opened"]
        episodes = sum(opened.values())
        rows.append([SMOL_NAMES.get(row["model"], row["model"]), f"{row['dev_reward']:.1f}", f"{row['success']:.1f}",
                     f"{opened.get('item 1', 0)} of {episodes}", str(opened.get("item 2", 0)),
                     str(row["opened_the_experts_item"]), f"{row['invalid']:.1f}%"])
    return markdown([f"model (seed {seed}; dev, the first {dev} tasks)", "reward", "success %", "opens item 1 first", "opens item 2 first",
                     "opens the expert's result", "invalid actions"], rows)


def smol_differences(folders):
    """ETO − control and ETO − SFT in dev reward and success, per seed of research/smol.sh runs."""
    by_seed, seeds = [], []
    for folder in folders:
        rows = {r["model"]: r for r in read_jsonl(os.path.join(HERE, folder, "table.jsonl"), ("model",))}
        by_seed.append(rows)
        with open(os.path.join(HERE, folder, "settings.json")) as f:
            seeds.append(str(json.load(f)["seed"]))
    def line(other, key):
        return ", ".join(f"{rows['eto-a'][key] - rows[other][key]:+.1f}" for rows in by_seed)
    return (f"ETO − control, seeds {', '.join(seeds)}: reward {line('control-a', 'dev_reward')}; "
            f"success {line('control-a', 'success')}. ETO − SFT: reward {line('sft', 'dev_reward')}; success "
            f"{line('sft', 'success')}.")


def smol_time(folder):
    """Each stage of a research/smol.sh run: its seconds, from its summary line."""
    with open(os.path.join(HERE, folder, "settings.json")) as f:
        settings = json.load(f)
    with open(os.path.join(HERE, folder, "host.json")) as f:
        host = json.load(f)
    parts = []
    for summary in read_jsonl(os.path.join(HERE, folder, "log.jsonl"), ("stage", "out", "seconds")):
        name = summary["out"].split("/", 2)[-1]  # RUN/...: the stage's output inside the run
        if summary["seconds"] >= 1:
            parts.append(f"{name} {summary['seconds']:.0f} s")
    return (f"Seed {settings['seed']} (DPO lr {settings['dpo_lr']}, autocast {settings['autocast']}, {host['cpu']}): "
            + "; ".join(parts) + ".")


def smol_training(folder):
    """The DPO stages of a research/smol.sh run: pairs, steps, and the last step's loss, margin and chosen NLL."""
    parts = []
    for summary in read_jsonl(os.path.join(HERE, folder, "log.jsonl"), ("stage", "out", "seconds")):
        if summary["stage"] == "sft":
            parts.append(f"SFT: {summary['examples']} trajectories, {summary['epochs']} epoch(s), NLL a token "
                         f"{summary['train_loss']:.3f} over training and {summary['dev_loss']:.3f} on held-out "
                         f"trajectories at its end")
        if summary["stage"] != "dpo":
            continue
        name = SMOL_NAMES.get(summary["out"].rstrip("/").rsplit("/", 1)[-1], summary["out"])
        if summary.get("rewards/margins") is not None and summary.get("loss") is not None and "control" not in name:
            what = (f"loss {summary['loss']:.3f}, implicit rewards β·log(π/π_ref) {summary['rewards/chosen']:+.2f} "
                    f"(chosen) and {summary['rewards/rejected']:+.2f} (rejected), "
                    f"{100 * summary['rewards/accuracies']:.0f}% of pairs ranked right, ")
        else:
            what = ""
        parts.append(f"{name}: {summary['pairs']} pairs, {summary['steps']} steps; {what}the chosen side's NLL "
                     f"{summary['nll/chosen']:.3f} a token")
    with open(os.path.join(HERE, folder, "settings.json")) as f:
        seed = json.load(f)["seed"]
    return f"Seed {seed}: " + "; ".join(parts) + " (the mean over the last tenth of each stage's steps, as its summary gives them)."


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def scienceworld_gold(path="envs/scienceworld_gold.tsv"):
    """The gold table's size and the tasks whose gold path falls short of 100."""
    with open(os.path.join(HERE, path)) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    short = [f"`{task}` ({float(reward):.2f} after {steps} steps)" for task, reward, steps in rows if float(reward) < 1.0]
    return (f"{len(rows)} tasks, every split; {len(short)} gold paths fall short of 100: " + ", ".join(short) +
            ". `train` leaves those out; on the test splits they lower the expert's ceiling.")


def shop_targets():
    """Where each split's right result sits on the first results page, and why item 1 is wrong there."""
    from collections import Counter
    from envs.shop import ShopEnv, search, tasks
    env, rows = ShopEnv(), []
    for split in ("train", "dev", "test_seen", "test_unseen"):
        ranks, why = Counter(), Counter()
        for task in tasks()[split]:
            page = search(task.query)[:5]
            ranks[page.index(task.target) + 1] += 1
            if page[0] != task.target:
                why[ShopEnv._passed_over_because(env.products[page[0]], task).split()[0]] += 1
        wrong = sum(ranks.values()) - ranks[1]
        rows.append([f"{split} ({sum(ranks.values())})", " / ".join(str(ranks[k]) for k in range(1, 6)),
                     f"over the price cap: {why['costs']} of {wrong}"])
    return markdown(["split", "target is item 1 / 2 / 3 / 4 / 5", "why item 1 is wrong, where it is"], rows)


def paper_table(path="results/paper/table.jsonl"):
    """The paper's main results (average reward x100), as results/paper/table.jsonl holds them; ETO in bold."""
    rows = read_jsonl(os.path.join(HERE, path), ("method",))
    columns = [key for key in rows[0] if key != "method"]
    bold = lambda row, text: f"**{text}**" if row["method"] == "ETO" else text  # noqa: E731
    return markdown(["method"] + columns, [[bold(row, row["method"])] + [bold(row, f"{row[c]:.1f}") for c in columns]
                                          for row in rows])


def bench_table(path="results/bench/bench.json"):
    """research/bench.py --out: its measurements on one host, in the order it took them."""
    with open(os.path.join(HERE, path)) as f:
        bench = json.load(f)
    with open(os.path.join(HERE, os.path.dirname(path), "host.json")) as f:
        host = json.load(f)
    return (f"`python research/bench.py {' '.join(bench['command'])}` on {host['cpu']} (torch {bench['torch']}, "
            f"{bench['where']}; the CPU's own kernels):\n\n" + markdown(["section", "measure", "value"], bench["rows"]))


def exercise_times(folder):
    """How long each experiment of exercises/README.md takes: the seconds of the stages its command runs."""
    def seconds(seed, files):
        path = os.path.join(HERE, folder, f"seed{seed}", "summaries.jsonl")
        summaries = {r["file"]: r["summary"]["seconds"] for r in read_jsonl(path, ("file", "summary"))}
        missing = [name for name in files if name not in summaries]
        if missing:
            raise InputError(f"{path}: no summary of {missing[0]}: collect a run that has it (--collect)")
        return sum(summaries[name] for name in files)
    with open(os.path.join(HERE, folder, "seed0", "host.json")) as f:
        host = json.load(f)  # seed 0's loop ran alone on the cores; seeds 1 and 2 beside other jobs
    variant = seconds(0, ["iter1/pairs-eto-divergence-nll.jsonl.args.json", "iter1/eto-divergence-nll/args.json",
                          "eval/eto-divergence-nll-1.test_seen.jsonl.args.json",
                          "eval/eto-divergence-nll-1.test_unseen.jsonl.args.json"])
    oracle = seconds(0, ["eval/best-of-4.test_seen.jsonl.args.json", "eval/best-of-4.test_unseen.jsonl.args.json"])
    return (f"Times on 2 cores of an {host['cpu']} host, from seed 0's run (each stage's own seconds, in `{folder}`; "
            f"another seed does the same work): experiment 1, {host['loop_seconds'] / 60:.1f} minutes (`python loop.py` "
            f"from scratch); experiment 2, {variant / 60:.1f} minutes (its new stages one after another); experiment "
            f"3, nothing beyond `python loop.py`; experiment 4, {oracle / 60:.1f} minutes (sampling both test splits).")


def seed_ranges(folder, stages, splits=("test_seen", "test_unseen")):
    """Per model: the lowest and highest reward over the seeds on each split: the range the answers give."""
    by_seed = seed_rows(folder)
    lines = ["| model | " + " | ".join(f"{s} reward, lowest – highest over seeds {', '.join(map(str, by_seed))}"
                                      for s in splits) + " |", "|---|" + "---|" * len(splits)]
    for stage in ran(by_seed, stages):
        cells = []
        for split in splits:
            got = [value(rows, stage, split) for rows in by_seed.values()]
            cells.append(f"{min(got):.1f} – {max(got):.1f}" if None not in got else "–")
        lines.append(f"| {NAMES.get(stage, stage)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the cue study ran with the SFT settings it was pre-registered with (lr 5e-3, warm-up over a tenth of the steps):
# the price cue's rows are the default shop's 3 seeds under them (research/cue_study.sh)
CUE_FOLDERS = {"price": "results/lecture-lr5e-3", "attribute": "results/cue-study/attribute"}
CUE_STAGES = ["sft", "eto-1", "sft-continued-1", "rft", "online-rl"]
CUE_MODELS = ["SFT", "ETO", "control", "RFT", "online RL"]  # research/cue_study.py's names of the same models


def cue_decision(cue, split="test_unseen"):
    """The pre-registered rule (results/cue-study/PREREGISTRATION.md): d_s = ETO − control of seed s; it holds when
    mean(d) > 0 and mean(d) exceeds the larger population std over seeds of ETO's and of the control's reward.
    Returns (holds, mean d, spread, per-seed d)."""
    by_seed = seed_rows(CUE_FOLDERS[cue])
    eto = [value(rows, "eto-1", split) for rows in by_seed.values()]
    control = [value(rows, "sft-continued-1", split) for rows in by_seed.values()]
    if None in eto or None in control:
        raise InputError(f"{CUE_FOLDERS[cue]}: a seed has no ETO or control row on {split}")
    diffs = [a - b for a, b in zip(eto, control)]
    spread = max(statistics.pstdev(eto), statistics.pstdev(control))
    mean = statistics.mean(diffs)
    return mean > 0 and mean > spread, mean, spread, diffs


def cue_rule(cue):
    """The decision rule's figures for a cue, on both test splits."""
    lines = ["| split | ETO − control, mean | per seed | spread over seeds | the rule |", "|---|---|---|---|---|"]
    for split in ("test_seen", "test_unseen"):
        holds, mean, spread, diffs = cue_decision(cue, split)
        lines.append(f"| {split} | {round(mean, 1) + 0.0:+.1f} | {', '.join(f'{round(d, 1) + 0.0:+.1f}' for d in diffs)} "
                     f"| {spread:.1f} | {'holds' if holds else 'does not hold'} |")
    return "\n".join(lines)


def cue_behaviour(cue, split="test_unseen"):
    """Per model: reward, how often the first result opened is the right one, and `item 1` where it is wrong
    (results/cue-study/CUE.jsonl, from research/cue_study.py --collect), mean ± std over seeds."""
    rows = read_jsonl(os.path.join(HERE, "results", "cue-study", f"{cue}.jsonl"), ("model", "split", "seed"))
    lines = [f"| model ({split}) | reward | right result opened first, % | `item 1` opened first where it is wrong, % |",
             "|---|---|---|---|"]
    for model in CUE_MODELS:
        found = sorted((r for r in rows if r["model"] == model and r["split"] == split), key=lambda r: r["seed"])
        if found:
            seeds = f" (seed{'s' if len(found) > 1 else ''} {', '.join(str(r['seed']) for r in found)})"
            lines.append(f"| {model}{seeds} | " + " | ".join(mean_std([r[key] for r in found]) for key in
                                                        ("avg_reward", "right_first", "item_1_when_wrong")) + " |")
    return "\n".join(lines)


def cue_mechanism():
    """What the pairs moved, per cue and model (results/cue-study/mechanism.jsonl): the implicit reward at the
    turn where a pair's sides part, chosen and rejected, the mean of the rejected side's later turns, and the
    share of the rejected side's moved log-prob that sits on the parting turn; mean ± std over seeds."""
    rows = read_jsonl(os.path.join(HERE, "results", "cue-study", "mechanism.jsonl"), ("cue", "model", "seed"))
    lines = ["| cue | model | seeds | pairs parting at a result click | chosen turn at the parting | rejected turn at the "
             "parting | a later rejected turn | share of the rejected side's change at the parting |",
             "|---|---|---|---|---|---|---|---|"]
    for cue in ("price", "attribute"):
        for model in ("ETO", "control"):
            found = sorted((r for r in rows if r["cue"] == cue and r["model"] == model), key=lambda r: r["seed"])
            if not found:
                continue
            clicks = sum(r["parting_at_an_item_click"] for r in found) / sum(r["pairs"] for r in found)

            def cell(key, percent=False):
                values = [(100 if percent else 1) * r[key] for r in found]
                shown = f"{statistics.mean(values):.0f}%" if percent else f"{statistics.mean(values):+.3f}"
                if len(values) > 1:
                    shown += f" ± {statistics.pstdev(values):.0f}" if percent else f" ± {statistics.pstdev(values):.3f}"
                return shown
            lines.append(f"| {cue} | {model} | {', '.join(str(r['seed']) for r in found)} | {100 * clicks:.0f}% | "
                         f"{cell('chosen_at_parting')} | "
                         f"{cell('rejected_at_parting')} | {cell('rejected_later_turn')} | "
                         f"{cell('share_of_rejected_at_parting', percent=True)} |")
    return "\n".join(lines)


def cue_verdict():
    """One sentence per cue: where ETO stands against its control on test_unseen, by the pre-registered rule."""
    parts = []
    for cue, what in (("price", "the price cue (`--env shop`)"), ("attribute", "the attribute cue (`--env shop:cue=attribute`)")):
        holds, mean, spread, _ = cue_decision(cue)
        parts.append(f"On {what}, ETO − control on test_unseen is {round(mean, 1) + 0.0:+.1f} against a spread over seeds "
                     f"of {spread:.1f}: ETO {'beats' if holds else 'does not beat'} its control by the pre-registered rule.")
    return " ".join(parts)


SMOL_NAMES = {"sft": "SFT", "eto-a": "ETO (the paper's pairs, Eq. 11)", "control-a": "control: NLL on ETO's chosen side",
              "eto-b": "divergence pairs + NLL", "control-b": "control of divergence pairs + NLL"}
SMOL = "results/smol-paper-lr"

TABLES = {
    "default-printed": lambda: printed_table(DEFAULT),
    "default-seeds": lambda: seeds_table(DEFAULT, MAIN_STAGES),
    "default-seeds-short": lambda: short_seeds_table(DEFAULT, MAIN_STAGES),
    "default-eto-minus-sft": lambda: differences(DEFAULT, "eto-1", "sft"),
    "default-eto-minus-control": lambda: differences(DEFAULT, "eto-1", "sft-continued-1"),
    "default-rl-minus-sft": lambda: differences(DEFAULT, "online-rl", "sft"),
    "default-rl-minus-control": lambda: differences(DEFAULT, "online-rl", "sft-continued-1"),
    "default-rl-budget": lambda: rl_budget(DEFAULT),
    "default-verdict": lambda: "ETO − SFT: " + differences(DEFAULT, "eto-1", "sft", ("test_unseen",)).split(" ", 1)[1]
    + "; ETO − control: " + differences(DEFAULT, "eto-1", "sft-continued-1", ("test_unseen",)).split(" ", 1)[1] + ".",
    "default-eto-minus-sft-unseen": lambda: differences(DEFAULT, "eto-1", "sft", ("test_unseen",)),
    "default-eto-minus-control-unseen": lambda: differences(DEFAULT, "eto-1", "sft-continued-1", ("test_unseen",)),
    "default-time": lambda: loop_time(DEFAULT),
    "dev-sweep": lambda: sweep_table("results/dev-sweep"),
    "default-behaviour-unseen": lambda: behaviour_table(DEFAULT, TRAINED, "test_unseen"),
    "default-seed1-printed": lambda: printed_table(DEFAULT, seed=1),
    "kernels": kernels_table,
    "arithmetic-lecture": lambda: arithmetic_table("lecture"),
    "arithmetic-lr5e-3": lambda: arithmetic_table("lr5e-3-wu0.1"),
    "arithmetic-summary": lambda: arithmetic_summary(["lecture", "lr5e-3-wu0.1", "lr3e-3-5-epochs", "lr3e-3-7-epochs"]),
    "arithmetic-range": lambda: arithmetic_range("lecture"),
    "arithmetic-verdict": lambda: arithmetic_verdict("lecture"),
    "arithmetic-curves": lambda: arithmetic_curves(["lr5e-3-wu0.1", "lecture"], seed=1),  # a seed that fell off at 5e-3
    "default-rl-curve": lambda: rl_curve(DEFAULT, "rl-log.jsonl"),
    "default-variant-minus-eto": lambda: differences(DEFAULT, "eto-divergence-nll-1", "eto-1"),
    "smol-paper-lr": lambda: smol_table(SMOL),
    "smol-paper-lr-seed1": lambda: smol_table(SMOL + "-seed1"),
    "smol-paper-lr-differences": lambda: smol_differences([SMOL, SMOL + "-seed1"]),
    "smol-paper-lr-seed1-training": lambda: smol_training(SMOL + "-seed1"),
    "smol-paper-lr-seed1-time": lambda: smol_time(SMOL + "-seed1"),
    "paper": paper_table,
    "exercise-times": lambda: exercise_times(DEFAULT),
    "bench": bench_table,
    "default-stage-times": lambda: stage_times(DEFAULT),
    "scienceworld-gold": scienceworld_gold,
    "shop-targets": shop_targets,
    "smol-paper-lr-time": lambda: smol_time(SMOL),
    "smol-paper-lr-training": lambda: smol_training(SMOL),
    "default-variant-minus-control": lambda: differences(DEFAULT, "eto-divergence-nll-1", "sft-continued-1"),
    "cue-price-seeds": lambda: seeds_table(CUE_FOLDERS["price"], CUE_STAGES),
    "cue-attribute-seeds": lambda: seeds_table(CUE_FOLDERS["attribute"], CUE_STAGES),
    "cue-price-rule": lambda: cue_rule("price"),
    "cue-attribute-rule": lambda: cue_rule("attribute"),
    "cue-price-behaviour": lambda: cue_behaviour("price"),
    "cue-attribute-behaviour": lambda: cue_behaviour("attribute"),
    "cue-verdict": cue_verdict,
    "cue-mechanism": cue_mechanism,
    "default-ranges": lambda: seed_ranges(DEFAULT, MAIN_STAGES),
    "default-eto-minus-sft-tests": lambda: differences(DEFAULT, "eto-1", "sft", ("test_seen", "test_unseen")),
    "default-eto-minus-control-tests": lambda: differences(DEFAULT, "eto-1", "sft-continued-1", ("test_seen", "test_unseen")),
    "default-variant-minus-eto-tests": lambda: differences(DEFAULT, "eto-divergence-nll-1", "eto-1", ("test_seen", "test_unseen")),
    "default-variant-minus-control-tests": lambda: differences(DEFAULT, "eto-divergence-nll-1", "sft-continued-1",
                                                                ("test_seen", "test_unseen")),
}
MARKER = re.compile(r"<!-- table:([\w-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)


def render(text):
    """The page's text with every table regenerated from its data; unknown names raise InputError."""
    def fill(match):
        name = match.group(1)
        if name not in TABLES:
            raise InputError(f"a page names table {name!r}, which research/pages.py does not make")
        return f"<!-- table:{name} -->\n{TABLES[name]()}\n<!-- /table:{name} -->"
    return MARKER.sub(fill, text)


def pages():
    return sorted({path for pattern in PAGES for path in glob.glob(os.path.join(HERE, pattern))})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", nargs="+", metavar=("DEST", "RUN"), help="copy RUNs' small files into DEST")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page differs")
    args = parser.parse_args()
    if args.collect:
        if len(args.collect) < 2:
            raise InputError("--collect DEST RUN [RUN ...]")
        collect(args.collect[0], args.collect[1:])
        return
    stale, rendered = [], {}
    for path in pages():  # every page rendered before any is written: a missing data file changes no page
        text = open(path, encoding="utf-8").read()
        rendered[path] = render(text)
        if rendered[path] != text:
            stale.append(os.path.relpath(path, HERE))
    if not args.check:
        for path in stale:
            with open(os.path.join(HERE, path), "w", encoding="utf-8") as f:
                f.write(rendered[os.path.join(HERE, path)])
    if args.check and stale:
        print(f"error: tables differ from their data in {', '.join(stale)}; run python research/pages.py",
              file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"stage": "pages", "rewritten" if not args.check else "checked": stale or len(pages())}))


if __name__ == "__main__":
    run_main(main)
