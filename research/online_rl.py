"""Online RL from the agent's own episodes, beside ETO: PPO's clipped surrogate with a group baseline.

    python loop.py --run runs/default                                  # SFT, ETO and its control
    python research/online_rl.py --run runs/default                             # from RUN/sft into RUN/rl, then its table
    python research/online_rl.py --run runs/default --out runs/default/rl-step --step-credit   # GiGPO's step groups

The paper's PPO row (Table 2) trains on the env's reward, on-policy; this is that algorithm in the form
common in LLM-agent RL (GRPO, Shao et al. 2024): no value model, a group of G episodes per task, each
episode's advantage its reward minus the group's mean. Each iteration:
  1. sample G episodes (temperature 1) of each of --tasks train tasks with the current policy;
  2. advantage of an episode = reward - mean of its group (/ the group's std with --normalize-std; a group
     whose rewards are all equal teaches nothing: advantage 0); every agent token of it carries it;
     with --step-credit (GiGPO, Feng et al. 2025; beyond the paper) each turn adds --step-weight x its
     step advantage: its discounted return minus the mean of the returns of every turn of the group taken
     from the same env state (the same observation: the shop is deterministic, so early states repeat);
  3. --ppo-epochs passes over the episodes in minibatches: PPO's clipped surrogate (Schulman et al. 2017,
     Eq. 7) per agent token, with the sampling policy's log-probs as the old policy; observations and
     prompts are masked out; optionally a KL penalty to the starting policy (--kl-coef, the k3 estimator).
The log-probs of an episode are those of its conversation as rendered and re-tokenized (the tokens the
model reads it as, common.tokenize_conversation), so the ratio is exactly 1 at an epoch's first pass.
Every iteration appends a line to OUT/log.jsonl (the samples' reward and success, invalid actions, KL to
the start, clip fraction, distinct replies, seconds) and saves OUT/model and the optimizer's state: a
killed run resumes after the last saved iteration, to the same weights as one never killed. Afterwards every --eval-splits split is run greedily (explore.py) and the table
prints beside the loop's RUN/results.jsonl rows; OUT/results.jsonl holds this model's rows.
"""
import argparse
import glob
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages, one folder up

import torch  # noqa: E402
from tqdm import tqdm

import envs
from common import (GRAD_CLIP, HelpFormatter, InputError, add_system_flags, format_table, load_model, pad_batch, read_jsonl, run_main,
                    save_model_atomically, set_seed, stage_record, token_logps, tokenize_conversation, write_jsonl)
from explore import make_generate_policy, rollout
from plumbing.launch import run_stage


# ---- the algorithm: advantages and the clipped surrogate --------------------------------------------
def group_advantages(rewards, group_size, normalize_std=False):
    """Per episode: its reward minus the mean of its group (episodes [k*G, (k+1)*G) share a task), divided
    by the group's standard deviation with `normalize_std`. An all-equal group gives 0s, never NaN."""
    advantages = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean, spread = statistics.mean(group), statistics.pstdev(group)
        for reward in group:
            if spread == 0:
                advantages.append(0.0)
            elif normalize_std:
                advantages.append((reward - mean) / spread)
            else:
                advantages.append(reward - mean)
    return advantages


def step_advantages(episodes, group_size, gamma=0.95):
    """GiGPO's step-level credit: per episode, per turn, the turn's discounted return gamma^(turns after
    it) x reward minus the mean return of every turn of the same group taken from the same state (the
    observation the turn answered). A state reached once gives 0. `episodes`: (observations, reward)."""
    advantages = []
    for start in range(0, len(episodes), group_size):
        group = episodes[start:start + group_size]
        returns = [[gamma ** (len(seen) - 1 - t) * reward for t in range(len(seen))] for seen, reward in group]
        by_state = defaultdict(list)
        for (seen, _), episode_returns in zip(group, returns):
            for observation, value in zip(seen, episode_returns):
                by_state[observation].append(value)
        for (seen, _), episode_returns in zip(group, returns):
            advantages.append([value - statistics.mean(by_state[observation])
                               for observation, value in zip(seen, episode_returns)])
    return advantages


def masked_mean(values, mask):
    """The mean of `values` where `mask` is 1 (both (B, T)): a mean over the agent's tokens only."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def clipped_surrogate(logps, old_logps, advantages, mask, clip=0.2):
    """PPO's clipped objective (Schulman et al. 2017, Eq. 7) as a loss, per token, masked-mean over the
    agent's tokens: -min(rho A, clip(rho, 1 - clip, 1 + clip) A), rho = pi(token) / pi_old(token).
    Returns (loss, the share of agent tokens whose ratio was clipped). All inputs (B, T)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = masked_mean(-torch.min(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, clip_fraction.item()


# ---- one iteration: sample, score, update ------------------------------------------------------------
def tokenize_episode(tokenizer, record, max_length):
    """(ids, loss mask, the agent turn each token belongs to: -1 outside the agent's turns)."""
    ids, mask = tokenize_conversation(tokenizer, record["messages"], max_length)
    turns, turn = [], -1
    for i, on in enumerate(mask):
        if on and (i == 0 or not mask[i - 1]):  # an agent turn's tokens are one unbroken run
            turn += 1
        turns.append(turn if on else -1)
    return ids, mask, turns


def batch_logps(model, examples, device):
    """Per-token log-probs (B, T-1) of padded episodes, with their loss mask (B, T-1)."""
    ids = pad_batch([e[0] for e in examples], 0).to(device)
    attention = pad_batch([[1] * len(e[0]) for e in examples], 0).to(device)
    mask = pad_batch([e[1] for e in examples], 0).to(device)[:, 1:].float()
    return token_logps(model, ids, attention), mask


def rl_iteration(model, reference, optimizer, tokenizer, task_ids, iteration, settings):
    """Sample, score and update once; returns the iteration's log line. `settings`: the parsed flags."""
    started, s = time.time(), settings
    episodes = [(task_id, sample) for task_id in task_ids for sample in range(s.group_size)]
    policy = make_generate_policy(model, tokenizer, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                                  seed=s.seed * 100003 + iteration)
    records = rollout(s.env, episodes, policy, batch_size=s.rollout_batch_size, desc=f"rl {iteration} sample")
    rewards = [record["reward"] for record in records]
    advantages = group_advantages(rewards, s.group_size, s.normalize_std)
    if s.step_credit:
        seen = [([m["content"] for m in r["messages"][1:] if m["role"] == "user"][:r["steps"]], r["reward"])
                for r in records]
        steps = step_advantages(seen, s.group_size, s.gamma)
    examples = []
    for k, record in enumerate(records):
        ids, mask, turns = tokenize_episode(tokenizer, record, s.max_length)
        per_token = [0.0 if turn < 0 else advantages[k] + (s.step_weight * steps[k][turn] if s.step_credit and
                                                          turn < len(steps[k]) else 0.0) for turn in turns]
        if sum(mask[1:]) and any(per_token):  # an episode with no advantage adds no gradient: skip its passes
            examples.append((ids, mask, per_token[1:]))
    # the sampling policy's log-probs (the "old" policy) and the start's, once, without gradients
    model.eval()  # dropout off: the ratio is exactly 1 until the first update
    with torch.no_grad():
        old = [batch_logps(model, examples[i:i + s.minibatch_size], s.device)[0]
               for i in range(0, len(examples), s.minibatch_size)]
        start = [batch_logps(reference, examples[i:i + s.minibatch_size], s.device)[0]
                 for i in range(0, len(examples), s.minibatch_size)]
    kl_start, clip_fractions, losses = [], [], []
    for _ in range(s.ppo_epochs):
        order = list(range(len(old)))
        random.Random(s.seed * 1000 + iteration).shuffle(order)
        for b in order:
            batch = examples[b * s.minibatch_size:(b + 1) * s.minibatch_size]
            logps, mask = batch_logps(model, batch, s.device)
            advantage = pad_batch([e[2] for e in batch], 0.0).to(s.device)
            loss, clip_fraction = clipped_surrogate(logps, old[b], advantage, mask, s.clip)
            log_ratio = start[b] - logps  # k3 = e^x - x - 1 >= 0, x = log start - log pi: Schulman's KL estimator
            kl = masked_mean(torch.exp(log_ratio) - log_ratio - 1, mask)
            if s.kl_coef:
                loss = loss + s.kl_coef * kl
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            clip_fractions.append(clip_fraction)
            kl_start.append(kl.item())
    steps_taken = sum(r["steps"] for r in records)
    return {"iteration": iteration, "episodes": len(records), "trained_episodes": len(examples),
            "reward": round(100 * statistics.mean(rewards), 2),
            "success": round(100 * statistics.mean(r >= 1.0 for r in rewards), 2),
            "invalid_action_rate": round(sum(r["invalid_actions"] for r in records) / max(steps_taken, 1), 4),
            "kl_start": round(statistics.mean(kl_start), 5) if kl_start else 0.0,
            "clip_fraction": round(statistics.mean(clip_fractions), 4) if clip_fractions else 0.0,
            "loss": round(statistics.mean(losses), 5) if losses else 0.0,
            "distinct_replies": len({m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"}),
            "seconds": round(time.time() - started, 1)}


# ---- the run: flags, resume, evaluation ---------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--run", required=True, help="a loop run folder: starts from RUN/sft, prints beside "
                                                     "RUN/results.jsonl")
    parser.add_argument("--out", default=None, help="output folder (None: RUN/rl)")
    parser.add_argument("--env", default=None, help="None: the run's (RUN/loop_args.json), else shop")
    parser.add_argument("--iterations", type=int, default=25, help="sample -> update rounds")
    parser.add_argument("--tasks", type=int, default=20, help="train tasks sampled per iteration")
    parser.add_argument("--group-size", type=int, default=4, help="G: episodes per task, the group whose mean is "
                                                                  "the baseline")
    parser.add_argument("--train-limit", type=int, default=500, help="the first N train tasks, cycled through in a "
                        "shuffled order (the loop's default recipe explores these 500)")
    parser.add_argument("--lr", type=float, default=3e-5, help="AdamW learning rate (ETO's DPO lr, chosen on dev for it; at 1e-4 "
                        "the policy collapsed within 25 iterations on seed 0)")
    parser.add_argument("--clip", type=float, default=0.2, help="PPO's epsilon: ratios outside [1-e, 1+e] are clipped")
    parser.add_argument("--ppo-epochs", type=int, default=2, help="K: passes over each iteration's episodes")
    parser.add_argument("--minibatch-size", type=int, default=16, help="episodes per optimizer step")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="weight of the KL penalty to the starting policy "
                                                                   "(0: none, as Dr. GRPO; it is logged either way)")
    parser.add_argument("--normalize-std", action="store_true", help="divide an advantage by its group's std (GRPO; "
                                                                     "Dr. GRPO drops it)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the episodes")
    beyond = parser.add_argument_group("beyond the paper")
    beyond.add_argument("--step-credit", action="store_true", help="GiGPO: add each turn's step advantage, from the "
                                                                   "turns of its group taken from the same state")
    beyond.add_argument("--step-weight", type=float, default=1.0, help="weight of the step advantage")
    beyond.add_argument("--gamma", type=float, default=0.95, help="discount of the step returns")
    rollouts = parser.add_argument_group("rollouts and evaluation")
    rollouts.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply")
    rollouts.add_argument("--max-length", type=int, default=1024, help="tokens per episode scored; longer are cut")
    rollouts.add_argument("--rollout-batch-size", type=int, default=200, help="episodes decoded together")
    rollouts.add_argument("--eval-splits", default=None, type=lambda text: text.split(","),
                          help="splits the trained model runs greedily on (None: the run's)")
    rollouts.add_argument("--native-kernels", action="store_true", help="the CPU's own kernels and threads, not "
                          "the AVX2 ones every loop stage is pinned to (plumbing.launch.CPU_KERNELS): other numbers")
    add_system_flags(parser)
    return parser


def pin_cpu_kernels(args):
    """Restart this process on the AVX2 kernels and threads the loop's stages use, unless they are set (or
    --native-kernels)."""
    from plumbing.launch import CPU_KERNELS, CPU_THREADS
    pinned = {**CPU_KERNELS, "OMP_NUM_THREADS": str(CPU_THREADS)}
    if args.native_kernels or all(os.environ.get(k) == v for k, v in pinned.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **pinned})


def fill_from_run(args):
    """The run's settings where a flag is unset; checks every count before anything loads."""
    loop_args = {}
    if os.path.exists(os.path.join(args.run, "loop_args.json")):
        with open(os.path.join(args.run, "loop_args.json")) as f:
            loop_args = json.load(f)
    args.out = args.out or os.path.join(args.run, "rl")
    args.env = args.env or loop_args.get("env", "shop")
    args.eval_splits = args.eval_splits or loop_args.get("eval_splits", ["test_seen", "test_unseen"])
    if not os.path.exists(os.path.join(args.run, "sft", "args.json")):
        raise InputError(f"{args.run}/sft not found: run `python loop.py --run {args.run}` first")
    for flag in ("iterations", "tasks", "group_size", "train_limit", "ppo_epochs", "minibatch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not 0 < args.clip < 1:
        raise InputError(f"--clip must be between 0 and 1, got {args.clip}")


def main():
    args = build_parser().parse_args()
    fill_from_run(args)
    pin_cpu_kernels(args)
    set_seed(args.seed)
    env = envs.make(args.env)
    train_ids = env.task_ids("train")[:args.train_limit]
    random.Random(args.seed).shuffle(train_ids)
    model_dir, log_path = os.path.join(args.out, "model"), os.path.join(args.out, "log.jsonl")
    log = []
    if os.path.exists(os.path.join(model_dir, "args.json")):  # the last saved iteration's model holds its log
        with open(os.path.join(model_dir, "args.json")) as f:
            log = json.load(f)["history"]
    model, tokenizer = load_model(model_dir if log else os.path.join(args.run, "sft"), args.device, args.dtype)
    reference = load_model(os.path.join(args.run, "sft"), args.device, args.dtype)[0].eval()  # the start, frozen
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    optimizer_file = lambda n: os.path.join(args.out, f"optimizer-{n}.pt")  # noqa: E731
    if log:  # resume: the weights and the optimizer state of the last saved iteration
        optimizer.load_state_dict(torch.load(optimizer_file(len(log))))
        print(f"online_rl: resuming after iteration {len(log)} of {args.iterations}", file=sys.stderr)
    started, first_iteration = time.time(), len(log)
    os.makedirs(args.out, exist_ok=True)
    for iteration in tqdm(range(len(log) + 1, args.iterations + 1), desc="online rl", initial=len(log),
                          total=args.iterations):
        first = (iteration - 1) * args.tasks
        task_ids = [train_ids[(first + k) % len(train_ids)] for k in range(args.tasks)]
        log.append(rl_iteration(model, reference, optimizer, tokenizer, task_ids, iteration, args))
        print(json.dumps(log[-1]), file=sys.stderr)
        # the optimizer's state first, then the model (whose args.json holds the log): a kill between the
        # two leaves the last iteration's model and its optimizer state, and the iteration runs again
        torch.save(optimizer.state_dict(), optimizer_file(iteration) + ".tmp")
        os.replace(optimizer_file(iteration) + ".tmp", optimizer_file(iteration))
        summary = {"stage": "online_rl", "out": args.out, **log[-1]}
        save_model_atomically(model, tokenizer, model_dir, stage_record(args, history=log, summary=summary))
        write_jsonl(log_path, log)  # the log, for reading
        if os.path.exists(optimizer_file(iteration - 1)):
            os.remove(optimizer_file(iteration - 1))
    if len(log) > first_iteration:  # this invocation trained: an evaluation of an earlier model is stale
        for stale in glob.glob(os.path.join(args.out, "eval.*")):
            os.remove(stale)
    rows = []
    for split in args.eval_splits:
        summary = run_stage("explore.py", os.path.join(args.out, f"eval.{split}.jsonl"), "--env", args.env, "--split",
                            split, "--model", model_dir, "--seed", str(args.seed), "--batch-size",
                            str(args.rollout_batch_size))
        rows.append({"stage": "online-rl", "split": split, "avg_reward": summary["avg_reward"],
                     "success_rate": summary["success_rate"], "n": summary["n"], "model": model_dir, "seed": args.seed})
    write_jsonl(os.path.join(args.out, "results.jsonl"), rows)
    loop_rows = os.path.join(args.run, "results.jsonl")
    print(format_table((read_jsonl(loop_rows, ("stage",)) if os.path.exists(loop_rows) else []) + rows))
    print(json.dumps({"stage": "online_rl", "out": args.out, "iterations": len(log),
                      "episodes": sum(line["episodes"] for line in log), "train_seconds":
                      round(sum(line["seconds"] for line in log), 1), "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    run_main(main)
