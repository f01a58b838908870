"""ETO steps 2, 3 and 5: one rollout loop for exploration, pairs and evaluation (and the expert data for step 1).

    python explore.py --env shop --split train --expert --out runs/demo/expert.jsonl
    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/explore.jsonl \
        --temperature 1.0 --samples 2                                   # exploration (sampled)
    python explore.py --env shop --split test_unseen --model runs/demo/sft --out runs/demo/eval_sft.jsonl
    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/explore.jsonl \
        --pairs-with runs/demo/expert.jsonl --pairs-out runs/demo/pairs.jsonl --pair-level step
    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/samples.jsonl \
        --temperature 1.0 --samples 4 --pairs-within --pairs-out runs/demo/pairs.jsonl   # self-play pairs

`--expert` plays the env's expert; `--model PATH` lets the agent act, greedily unless `--temperature`
is above 0. Each turn, one `generate` call advances every unfinished episode of a batch (KV cache
within the turn, stop at the end-of-turn token). The action is what follows `Action:`; a reply with
none gets an invalid-format observation and still costs a step.

Output: one JSON line per trajectory: task_id, env, split, sample, messages (system, user, assistant
...; observations are user turns starting "Observation: "), reward, success, steps, invalid_actions,
stop ("done", "max_steps" or "context"), temperature, top_p, seed, and with --pair-level step or mixture
forced_turns (the expert's turns replayed before the agent acted). The last line printed is a JSON
summary: n, avg_reward (x100), success_rate (x100), invalid_action_rate.
"""
import argparse
import json
import random
import re
import sys
import time

import torch
from tqdm import tqdm

import envs
from sft import (InputError, add_system_flags, end_of_turn_token, load_model, read_jsonl, run_main, set_seed,
                 write_json, write_jsonl)

INVALID_FORMAT = (f"{envs.INVALID}: no 'Action:' found. Reply as 'Thought: ...' on one line and "
                  f"'Action: ...' on the next.")


def parse_action(reply):
    """The text after the last 'Action:' of a reply (up to the end of its line), or None if there is none."""
    found = re.findall(r"Action:[ \t]*(.*)", reply)
    return found[-1].strip() if found and found[-1].strip() else None


def make_generate_policy(model, tokenizer, temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0):
    """A policy: (conversations, task ids) -> one (reply, finished) per conversation, from one batched
    `generate` call; None for a conversation that no longer fits the model's context."""
    from transformers import GenerationConfig
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                              pad_token_id=tokenizer.pad_token_id, **sampling)
    context = getattr(model.config, "max_position_embeddings", None) or 10 ** 9
    calls = [0]

    @torch.no_grad()
    def policy(conversations, task_ids=None):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        fits = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) + max_new_tokens <= context for text in texts]
        if not any(fits):
            return [None] * len(texts)
        tokenizer.padding_side = "left"  # left padding keeps every prompt's last token at the end
        batch = tokenizer([t for t, ok in zip(texts, fits) if ok], add_special_tokens=False, padding=True,
                          return_tensors="pt").to(model.device)
        torch.manual_seed(seed * 100003 + calls[0])  # a sampled run replays exactly from its seed
        calls[0] += 1
        model.eval()
        output = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:]
        rows = iter(output.tolist())
        replies = []
        for ok in fits:
            row = next(rows) if ok else None
            replies.append(None if row is None else (
                tokenizer.decode(row, skip_special_tokens=True).split("\nObservation:")[0].strip(),
                any(t in stop_ids for t in row)))  # finished: it stopped at end of turn, not at the token limit
        return replies

    return policy


def make_expert_policy(env):
    """A policy that replays the env's expert turns (the turn index is the number of replies so far)."""
    def policy(conversations, task_ids):
        replies = []
        for conversation, task_id in zip(conversations, task_ids):
            turn = sum(m["role"] == "assistant" for m in conversation)
            replies.append((env.expert(task_id)[turn], True))
        return replies
    return policy


def make_forcing_policy(policy, forced_turns):
    """Teacher forcing (step-level pairs): an episode whose task has forced turns left replays them; the
    other episodes of the batch go to `policy` in one call."""
    def forcing_policy(conversations, task_ids):
        replies_so_far = [sum(m["role"] == "assistant" for m in c) for c in conversations]
        free = [i for i, (n, task_id) in enumerate(zip(replies_so_far, task_ids)) if n >= len(forced_turns[task_id])]
        free_replies = iter(policy([conversations[i] for i in free], [task_ids[i] for i in free]) if free else [])
        free = set(free)
        return [next(free_replies) if i in free else (forced_turns[task_id][n], True)
                for i, (n, task_id) in enumerate(zip(replies_so_far, task_ids))]
    return forcing_policy


def step_prefixes(expert, task_ids, seed):
    """Per task, the expert's first t-1 turns with t drawn uniformly from 2..T (paper App. B: the agent
    acts from step t on; t = 1 is the trajectory level)."""
    rng = random.Random(seed)
    expert_by_task = {record["task_id"]: record for record in expert}
    prefixes = {}
    for task_id in task_ids:
        turns = [m["content"] for m in expert_by_task[task_id]["messages"] if m["role"] == "assistant"]
        prefixes[task_id] = turns[:rng.randrange(1, len(turns))] if len(turns) > 1 else []
    return prefixes


def cap(observation, max_chars):
    """An observation cut to max_chars characters (None: whole), marked so the agent knows."""
    return observation if not max_chars or len(observation) <= max_chars else observation[:max_chars] + " [...]"


def rollout(env_name, episodes, policy, batch_size=32, max_steps=None, desc="rollout", max_observation_chars=None):
    """Run (task_id, sample) episodes in batches; one policy call per turn advances a whole batch.

    Returns one record per episode with its messages, reward and step counts. The reward is the last
    one the env returned: 0 until the shop's buy, the running best score for ScienceWorld.
    """
    records = []
    progress = tqdm(total=len(episodes), desc=desc, leave=False)
    pool = [envs.make(env_name)] if episodes else []  # one env per active episode, reused batch after batch
    batch_size = min(batch_size, getattr(pool[0], "max_batch", batch_size)) if pool else batch_size  # JVM envs
    pool += [envs.make(env_name) for _ in range(min(batch_size, len(episodes)) - len(pool))]
    if max_observation_chars is None:
        max_observation_chars = getattr(pool[0], "max_observation_chars", None) if pool else None
    for start in range(0, len(episodes), batch_size):
        batch = episodes[start:start + batch_size]
        batch_envs = pool[:len(batch)]
        states = []
        for env, (task_id, sample) in zip(batch_envs, batch):
            first_observation = cap(env.reset(task_id), max_observation_chars)
            states.append({"task_id": task_id, "sample": sample, "reward": 0.0, "steps": 0, "invalid_actions": 0,
                           "cut_replies": 0, "stop": None, "messages": [{"role": "system", "content": env.system_prompt},
                                                      {"role": "user", "content": first_observation}]})
        active = list(range(len(batch)))
        while active:
            replies = policy([states[i]["messages"] for i in active], [states[i]["task_id"] for i in active])
            still_active = []
            for i, answer in zip(active, replies):
                state, env = states[i], batch_envs[i]
                if answer is None:  # the conversation outgrew the model's context: the episode ends here
                    state["stop"] = "context"
                    continue
                reply, finished = answer
                state["messages"].append({"role": "assistant", "content": reply})
                state["steps"] += 1
                state["cut_replies"] += not finished  # stopped by --max-new-tokens, not at end of turn
                action = parse_action(reply)
                if action is None:
                    observation, reward, done = INVALID_FORMAT if finished else \
                        f"{envs.INVALID}: the reply was cut at the token limit before an action.", 0.0, False
                else:
                    observation, reward, done = env.step(action)
                    state["reward"] = reward
                state["invalid_actions"] += observation.startswith(envs.INVALID)
                if done:
                    state["stop"] = "done"
                elif state["steps"] >= (max_steps or env.max_steps):
                    state["stop"] = "max_steps"  # steps ran out: the reward so far stands (the shop's is 0)
                else:
                    state["messages"].append({"role": "user",
                                              "content": f"Observation: {cap(observation, max_observation_chars)}"})
                    still_active.append(i)
            active = still_active
        records += states
        progress.update(len(batch))
    progress.close()
    return records


# ---- pairs (ETO step 3) ----------------------------------------------------------------------------
def cut_after_assistant_turns(messages, n_turns):
    """The messages up to and including the n-th assistant turn (or the last one, if fewer)."""
    assistant_at = [i for i, message in enumerate(messages) if message["role"] == "assistant"][:n_turns]
    return messages[:assistant_at[-1] + 1] if assistant_at else []


PAIR_LEVELS = ("trajectory", "divergence", "step", "mixture")


def make_pairs(explored, expert, extra_turns=5, level="trajectory"):
    """Failure/success pairs against the expert trajectory of the same task (authors' rules).

    explored reward < expert reward: chosen = expert, rejected = explored (lose);
    explored reward > expert reward: chosen = explored, rejected = expert (win); equal: no pair (tie).
    level "trajectory" (the paper): the continuations after the task prompt; the rejected side is cut to
    the chosen side's assistant turns + extra_turns, so a long failure cannot dominate the summed
    log-prob. level "divergence": each side keeps only the first turn whose action differs, after the
    explored trajectory's own turns so far (same actions, so the same page), so the correct turns a
    failure takes after its mistake are not pushed down with it. "step" and "mixture" pair like
    "trajectory", from the first turn the agent chose itself (a record's `forced_turns` are the expert's,
    teacher-forced, and belong to the prompt). Returns (pairs, {"win": .., "tie": .., "lose": ..}).
    """
    if level not in PAIR_LEVELS:
        raise InputError(f"unknown pair level {level!r}; valid levels: {', '.join(PAIR_LEVELS)}")
    expert_by_task = {record["task_id"]: record for record in expert}
    pairs, counts = [], {"win": 0, "tie": 0, "lose": 0}
    for record in explored:
        reference = expert_by_task.get(record["task_id"])
        if reference is None:
            raise InputError(f"no expert trajectory for task {record['task_id']!r}")
        # the prompt ends before the first reply the agent chose (the first reply, unless teacher-forced)
        assistant_at = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
        forced = record.get("forced_turns", 0)
        if len(assistant_at) <= forced:
            continue  # the episode ended (context limit) before the agent acted
        start = assistant_at[forced]
        if record["messages"][:start] != reference["messages"][:start]:
            raise InputError(f"task {record['task_id']!r}: explored and expert prompts differ (another env or split?)")
        if record["reward"] == reference["reward"]:
            counts["tie"] += 1
            continue
        outcome = "win" if record["reward"] > reference["reward"] else "lose"
        counts[outcome] += 1
        chosen, rejected = (record, reference) if outcome == "win" else (reference, record)
        if level == "divergence":  # the first turn whose *action* differs; thoughts alone may differ before it
            differ = next((i for i, (a, b) in enumerate(zip(chosen["messages"], rejected["messages"]))
                           if a["role"] == "assistant" and parse_action(a["content"]) != parse_action(b["content"])), None)
            if differ is not None:  # the same actions so far, so the same page: the agent's own history is the prompt
                pairs.append({"task_id": record["task_id"], "prompt": record["messages"][:differ],
                              "chosen": [chosen["messages"][differ]], "rejected": [rejected["messages"][differ]],
                              "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"]})
            continue
        # both sides end on an assistant turn (an episode cut by the context limit ends on an observation)
        chosen_turns = cut_after_assistant_turns(chosen["messages"][start:], len(chosen["messages"]))
        n_chosen = sum(m["role"] == "assistant" for m in chosen_turns)
        rejected_turns = cut_after_assistant_turns(rejected["messages"][start:], n_chosen + extra_turns)
        if not chosen_turns or not rejected_turns:
            continue
        pairs.append({"task_id": record["task_id"], "prompt": record["messages"][:start],
                      "chosen": chosen_turns, "rejected": rejected_turns,
                      "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"]})
    return pairs, counts


def best_and_worst(records):
    """Self-play's pairs need no expert: per task, (the worst sample, the best sample) by reward, as two
    lists for make_pairs(worst, best); a task whose samples all score the same gives a tie."""
    by_task = {}
    for record in records:
        by_task.setdefault(record["task_id"], []).append(record)
    worst = [min(samples, key=lambda r: r["reward"]) for samples in by_task.values()]
    best = [max(samples, key=lambda r: r["reward"]) for samples in by_task.values()]
    return worst, best


def best_of_n(records):
    """Best-of-N (paper's baseline): per task, the best reward among its samples; averaged over tasks."""
    best = {}
    for record in records:
        best[record["task_id"]] = max(best.get(record["task_id"], 0.0), record["reward"])
    return {"tasks": len(best), "avg_reward": round(100 * sum(best.values()) / max(len(best), 1), 2),
            "success_rate": round(100 * sum(r >= 1.0 for r in best.values()) / max(len(best), 1), 2)}


def distinct_successes(records):
    """Successful trajectories (reward 1), one per task and distinct action sequence: RFT's data."""
    seen, kept = set(), []
    for record in records:
        actions = tuple(parse_action(m["content"]) for m in record["messages"] if m["role"] == "assistant")
        if record["reward"] >= 1.0 and (record["task_id"], actions) not in seen:
            seen.add((record["task_id"], actions))
            kept.append(record)
    return kept


def summarize(records):
    n = len(records)
    steps = sum(r["steps"] for r in records)
    return {"n": n, "avg_reward": round(100 * sum(r["reward"] for r in records) / max(n, 1), 2),
            "success_rate": round(100 * sum(r["success"] for r in records) / max(n, 1), 2),
            "invalid_action_rate": round(sum(r["invalid_actions"] for r in records) / max(steps, 1), 4),
            "cut_replies": sum(r.get("cut_replies", 0) for r in records),
            "stops": {stop: sum(r["stop"] == stop for r in records) for stop in ("done", "max_steps", "context")},
            "avg_steps": round(steps / max(n, 1), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to run
    parser.add_argument("--env", default="shop", help=f"one of: {', '.join(sorted(envs.ENVS))} "
                                                      "(scienceworld:TYPE,TYPE,... for some task types)")
    parser.add_argument("--split", default="train", help=f"one of: {', '.join(envs.SPLITS)}")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks of the split")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N tasks of the split (before --limit)")
    parser.add_argument("--out", required=True, help="output trajectory JSONL")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--expert", action="store_true", help="replay the env's expert trajectories")
    who.add_argument("--model", help="a model folder (from sft.py/dpo.py) or a HF chat model")
    # sampling (greedy by default: evaluation, and the authors' exploration)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=1, help="trajectories per task")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--max-steps", type=int, default=None, help="actions per episode (default: the env's)")
    parser.add_argument("--max-observation-chars", type=int, default=None,
                        help="cut longer observations (default: the env's; shop: none, scienceworld: 1000; 0: none)")
    parser.add_argument("--batch-size", type=int, default=32, help="episodes advanced by one generate call")
    # pairs for DPO
    parser.add_argument("--pairs-with", help="expert trajectory JSONL to pair the explored trajectories with")
    parser.add_argument("--pairs-out", help="where to write the pairs JSONL (needs --pairs-with)")
    parser.add_argument("--extra-turns", type=int, default=5, help="rejected side: chosen turns + this many")
    parser.add_argument("--successes-out", help="also write the successful trajectories, one per distinct "
                                                  "action sequence (RFT's extra SFT data)")
    parser.add_argument("--pair-level", default="trajectory", choices=PAIR_LEVELS,
                        help="trajectory: whole continuations (paper); divergence: the first differing turn; "
                             "step: the agent acts after t-1 teacher-forced expert turns (paper App. B); "
                             "mixture: trajectory and step pairs together")
    parser.add_argument("--pairs-within", action="store_true",
                        help="self-play: pair each task's best sample with its worst (no expert; needs --samples > 1)")
    add_system_flags(parser)
    args = parser.parse_args()
    if args.samples < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.skip < 0:
        raise InputError("--samples, --batch-size and --limit must be at least 1, --skip at least 0")
    if args.temperature == 0 and args.samples > 1:
        raise InputError("--samples > 1 needs --temperature > 0: greedy rollouts are all the same")

    if args.pairs_within and (args.pairs_with or not args.pairs_out or args.samples < 2):
        raise InputError("--pairs-within needs --pairs-out and --samples > 1, and no --pairs-with")
    if not args.pairs_within and bool(args.pairs_with) != bool(args.pairs_out):
        raise InputError("--pairs-with and --pairs-out go together")
    if args.pair_level in ("step", "mixture") and not args.pairs_with:
        raise InputError(f"--pair-level {args.pair_level} teacher-forces the expert: it needs --pairs-with")
    expert_records = read_jsonl(args.pairs_with, ("task_id", "messages", "reward")) if args.pairs_with else None

    started = time.time()
    set_seed(args.seed)
    env = envs.make(args.env)
    split_task_ids = env.task_ids(envs.check_split(args.split))
    task_ids = split_task_ids[args.skip:][:args.limit]
    if not task_ids:
        raise InputError(f"--skip {args.skip} leaves no task: split {args.split!r} has {len(split_task_ids)}")
    if expert_records is not None:  # fail now, not after minutes of rollouts
        missing = sorted(set(task_ids) - {record["task_id"] for record in expert_records})
        if missing:
            raise InputError(f"{args.pairs_with}: no expert trajectory for {len(missing)} tasks, e.g. {missing[0]!r}")
    episodes = [(task_id, sample) for task_id in task_ids for sample in range(args.samples)]
    if args.expert:
        policy, settings = make_expert_policy(env), {"temperature": None, "top_p": None}
    else:
        model, tokenizer = load_model(args.model, args.device, args.dtype)
        policy = make_generate_policy(model, tokenizer, args.temperature, args.top_p, args.max_new_tokens, args.seed)
        settings = {"temperature": args.temperature, "top_p": args.top_p}
    rollout_flags = dict(batch_size=args.batch_size, max_steps=args.max_steps,
                         max_observation_chars=args.max_observation_chars)
    records = [] if args.pair_level == "step" else rollout(args.env, episodes, policy, desc=args.split, **rollout_flags)
    if args.pair_level in ("step", "mixture"):  # the same episodes again, after a teacher-forced expert prefix
        prefixes = step_prefixes(expert_records, task_ids, args.seed)
        forced = rollout(args.env, episodes, make_forcing_policy(policy, prefixes), desc=f"{args.split} (step)",
                         **rollout_flags)
        records += [{**record, "forced_turns": len(prefixes[record["task_id"]])} for record in forced]
    for record in records:
        record.update({"env": args.env, "split": args.split, "success": record["reward"] >= 1.0,
                       "seed": args.seed, "policy": "expert" if args.expert else args.model, **settings})
    summary = {"stage": "explore", "out": args.out, **summarize(records),  # step episodes count in it too
               "forced_episodes": sum(record.get("forced_turns", 0) > 0 for record in records)}
    if args.samples > 1:  # Best-of-N: scored by env reward, as the paper's baseline (an oracle pick)
        summary["best_of_n"] = {"n": args.samples, **best_of_n(records)}
    if args.pairs_out:
        explored, reference = best_and_worst(records) if args.pairs_within else (records, expert_records)
        pairs, counts = make_pairs(explored, reference, args.extra_turns, args.pair_level)
        write_jsonl(args.pairs_out, pairs)
        summary.update({"pairs": len(pairs), **counts})
    if args.successes_out:
        successes = distinct_successes(records)
        write_jsonl(args.successes_out, successes)
        summary["successes"] = len(successes)
    write_jsonl(args.out, records)  # then the .args.json: written last, it marks the stage complete
    summary["seconds"] = round(time.time() - started, 1)
    write_json(args.out + ".args.json", {"args": vars(args), "summary": summary})
    print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
