"""ETO steps 2 and 5: one rollout loop for exploration and evaluation (and the expert data for step 1).

    python explore.py --env shop --split train --expert --out runs/demo/expert.jsonl
    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/iter1/explore.jsonl
    python explore.py --env shop --split test_unseen --model runs/demo/sft --out runs/demo/eval_sft.jsonl
    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/samples.jsonl \
        --temperature 1.0 --samples 4                 # sampled: Best-of-N, RFT and self-play read these
    torchrun --nproc-per-node 2 explore.py --split train --model runs/demo/sft --out runs/demo/iter1/explore.jsonl
                                                     # each rank a share of the episodes; the same records

`--expert` plays the env's expert; `--model PATH` lets the agent act, greedily unless `--temperature`
is above 0. Each turn one batched decode advances every unfinished episode, up to its end-of-turn token
(the chat policy and its sampling rule: plumbing/policy.py). `plain_decode` feeds each whole conversation
for every token; the default `--decode cached` gives the same tokens faster (plumbing/decode.py). The
action is what follows `Action:`; a reply with none gets an invalid-format observation and still costs a
step. pairs.py builds pairs from the output.

Output: a JSON line per trajectory (task_id, sample, messages, reward, success, steps, invalid_actions,
stop, temperature, seed, ...). The last line printed is a JSON summary; OUT.args.json records it.
"""
import argparse
import json
import time

from tqdm import tqdm

import envs
from common import (HelpFormatter, InputError, add_system_flags, check_trajectory, load_model, read_jsonl, run_main,
                    set_seed, stage_record, write_json, write_jsonl)
from envs import parse_action
from envs.expert import make_expert_policy, make_forcing_policy, make_in_context_policy, step_prefixes
from plumbing.policy import end_of_turn_token, make_generate_policy  # noqa: F401 (end_of_turn_token: for callers)
from plumbing.ranks import Ranks, shard

INVALID_FORMAT = (f"{envs.INVALID}: no 'Action:' found. Reply as 'Thought: ...' on one line and "
                  f"'Action: ...' on the next.")


# the model's side of a rollout (a reply per conversation, decoded token by token): plumbing/policy.py


def cap(observation, max_chars):
    """An observation cut to max_chars characters (None: whole), marked so the agent knows."""
    return observation if not max_chars or len(observation) <= max_chars else observation[:max_chars] + " [...]"


def rollout(env_name, episodes, policy, batch_size=32, max_steps=None, desc="rollout", max_observation_chars=None,
            max_invalid=None):
    """Run (task_id, sample) episodes in batches; one policy call per turn advances a whole batch.

    Returns one record per episode with its messages, reward and step counts. The reward is the last
    one the env returned: 0 until the shop's buy, the running best score for ScienceWorld. An episode
    ends after max_invalid invalid actions in a row (None: the env's `max_invalid`, if any; 0: never).
    """
    records = []
    if not episodes:
        return records
    pool = [envs.make(env_name)]  # one env per active episode, reused batch after batch
    # an env may cap the parallel episodes (ScienceWorld: each env is a JVM) and cut long observations
    batch_size = min(batch_size, getattr(pool[0], "max_batch", batch_size))
    while len(pool) < min(batch_size, len(episodes)):
        pool.append(envs.make(env_name))
    if max_observation_chars is None:
        max_observation_chars = getattr(pool[0], "max_observation_chars", None)
    if max_invalid is None:
        max_invalid = getattr(pool[0], "max_invalid", 0)
    progress = tqdm(total=len(episodes), desc=desc, leave=False)
    for start in range(0, len(episodes), batch_size):
        batch = episodes[start:start + batch_size]
        batch_envs = pool[:len(batch)]
        states = []
        for env, (task_id, sample) in zip(batch_envs, batch):
            first_observation = cap(env.reset(task_id), max_observation_chars)
            states.append({"task_id": task_id, "sample": sample, "reward": 0.0, "steps": 0, "invalid_actions": 0,
                           "cut_replies": 0, "stop": None, "messages": [{"role": "system", "content": env.system_prompt},
                                                      {"role": "user", "content": first_observation}]})
        active, invalid_in_a_row = list(range(len(batch))), [0] * len(batch)
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
                invalid = observation.startswith(envs.INVALID)
                state["invalid_actions"] += invalid
                invalid_in_a_row[i] = invalid_in_a_row[i] + 1 if invalid else 0
                if done:
                    state["stop"] = "done"
                elif state["steps"] >= (max_steps or env.max_steps):
                    state["stop"] = "max_steps"  # steps ran out: the reward so far stands (the shop's is 0)
                elif max_invalid and invalid_in_a_row[i] >= max_invalid:
                    state["stop"] = "invalid"  # stuck: the reward so far stands, the rest would be waited for
                else:
                    state["messages"].append({"role": "user",
                                              "content": f"Observation: {cap(observation, max_observation_chars)}"})
                    still_active.append(i)
            active = still_active
        records += states
        progress.update(len(batch))
    progress.close()
    return records


def summarize(records):
    n, steps = len(records), sum(r["steps"] for r in records)
    return {"n": n, "avg_reward": round(100 * sum(r["reward"] for r in records) / max(n, 1), 2),
            "success_rate": round(100 * sum(r["success"] for r in records) / max(n, 1), 2),
            "invalid_action_rate": round(sum(r["invalid_actions"] for r in records) / max(steps, 1), 4),
            "cut_replies": sum(r.get("cut_replies", 0) for r in records),
            "stops": {stop: sum(r["stop"] == stop for r in records)
                      for stop in ("done", "max_steps", "invalid", "context")},
            "avg_steps": round(steps / max(n, 1), 2)}


def check_arguments(args):
    """Every flag that can be wrong is refused before a model loads: one line each, naming the flag."""
    for flag, value, least in (("--samples", args.samples, 1), ("--batch-size", args.batch_size, 1),
                               ("--limit", args.limit, 1), ("--skip", args.skip, 0),
                               ("--max-invalid", args.max_invalid, 0), ("--max-steps", args.max_steps, 1)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be at least {least}, got {value}")
    if args.temperature == 0 and args.samples > 1:
        raise InputError("--samples > 1 needs --temperature > 0: greedy rollouts are all the same")
    if args.in_context and args.expert:
        raise InputError("--in-context shows an example to a model: it needs --model, not --expert")
    if args.teacher_force and args.expert:
        raise InputError("--teacher-force replays the expert before the agent acts: it needs --model, not --expert")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # what to run
    parser.add_argument("--env", default="shop", help=f"one of: {', '.join(envs.available())} (envs/), "
                        "NAME:OPTIONS (e.g. scienceworld:TYPE,TYPE), or a module of yours with make(options)")
    parser.add_argument("--split", default="train", help=f"one of: {', '.join(envs.SPLITS)}")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks of the split (None: all)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N tasks of the split (before --limit)")
    parser.add_argument("--out", required=True, help="output trajectory JSONL")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--expert", action="store_true", help="replay the env's expert trajectories")
    who.add_argument("--model", help="a model folder (from sft.py/dpo.py), a HF chat model or a .gguf file")
    # sampling (greedy by default: evaluation, and the authors' exploration)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the paper explores greedily)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's p, when --temperature > 0")
    parser.add_argument("--samples", type=int, default=1, help="trajectories per task")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--max-steps", type=int, default=None, help="actions per episode (None: the env's)")
    parser.add_argument("--max-observation-chars", type=int, default=None,
                        help="cut longer observations (None: the env's; shop: none, scienceworld: 1000; 0: none)")
    parser.add_argument("--max-invalid", type=int, default=None,
                        help="end an episode after N invalid actions in a row, its reward so far standing (None: "
                             "the env's; household: 5, others: never; 0: never)")
    parser.add_argument("--batch-size", type=int, default=32, help="episodes advanced together, one decode a turn")
    parser.add_argument("--decode", default="cached", choices=("cached", "plain"), help="cached: a KV cache kept "
                        "across tokens and turns; plain: each conversation fed whole per token (same tokens, slower)")
    beyond = parser.add_argument_group("beyond the paper's exploration")
    beyond.add_argument("--teacher-force", metavar="EXPERT_JSONL",
                        help="step-level exploration (paper App. B): replay the expert's first t-1 turns of each "
                             "task, t drawn from 2..T by --seed, then let the agent act")
    beyond.add_argument("--in-context", metavar="EXPERT_JSONL",
                        help="show the file's first trajectory before each task, as the authors' evaluation does")
    add_system_flags(parser)
    return parser


def main():
    args = build_parser().parse_args()
    check_arguments(args)
    example = read_jsonl(args.in_context, ("task_id", "messages"), check_trajectory)[0] if args.in_context else None
    expert_records = read_jsonl(args.teacher_force, ("task_id", "messages", "reward"), check_trajectory) \
        if args.teacher_force else None

    started = time.time()
    ranks = Ranks.start(args.device)  # under torchrun: a contiguous share of the episodes per rank
    args.device = ranks.device
    set_seed(args.seed)
    env = envs.make(args.env)
    split_task_ids = env.task_ids(envs.check_split(args.split))
    task_ids = split_task_ids[args.skip:][:args.limit]
    if not task_ids:
        raise InputError(f"--skip {args.skip} leaves no task: split {args.split!r} has {len(split_task_ids)}")
    if expert_records is not None:  # before any model loads: every task has its expert turns
        prefixes = step_prefixes(expert_records, task_ids, args.seed, where=args.teacher_force)
    episodes = [(task_id, sample) for task_id in task_ids for sample in range(args.samples)]
    if args.expert:
        policy, settings = make_expert_policy(env), {"temperature": None, "top_p": None}
    else:
        model, tokenizer = load_model(args.model, args.device, args.dtype)
        policy = make_generate_policy(model, tokenizer, args.temperature, args.top_p, args.max_new_tokens, args.seed,
                                      args.decode)
        settings = {"temperature": args.temperature, "top_p": args.top_p}
        if example is not None:
            policy = make_in_context_policy(policy, example)
            settings["in_context"] = example["task_id"]
    if expert_records is not None:
        policy = make_forcing_policy(policy, prefixes)
    records = rollout(args.env, shard(episodes, ranks.rank, ranks.world), policy, batch_size=args.batch_size,
                      max_steps=args.max_steps, desc=args.split, max_observation_chars=args.max_observation_chars,
                      max_invalid=args.max_invalid)
    records = ranks.gather(records)  # every rank's episodes, in order: rank 0 writes them all
    if not ranks.main:
        return
    for record in records:
        record.update({"env": args.env, "split": args.split, "success": record["reward"] >= 1.0,
                       "seed": args.seed, "policy": "expert" if args.expert else args.model, **settings})
        if expert_records is not None:
            record["forced_turns"] = len(prefixes[record["task_id"]])
    summary = {"stage": "explore", "out": args.out, **summarize(records)}
    write_jsonl(args.out, records)  # then the .args.json: written last, it marks the stage complete
    summary["seconds"] = round(time.time() - started, 1)
    write_json(args.out + ".args.json", stage_record(args, summary=summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
