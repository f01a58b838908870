"""Policies built from the env's expert: the expert itself (the data SFT trains on), and two ways to mix
its turns into the agent's prompt: teacher forcing (step-level exploration, paper App. B) and one expert
trajectory shown in context (the authors' evaluation prompt). A policy maps (conversations, task ids)
to one (reply, finished) per conversation, as explore.py's rollout calls it."""
import random


def make_expert_policy(env):
    """A policy that replays the env's expert turns (the turn index is the number of replies so far)."""
    def policy(conversations, task_ids):
        return [(env.expert(task_id)[sum(m["role"] == "assistant" for m in conversation)], True)
                for conversation, task_id in zip(conversations, task_ids)]
    return policy


def make_in_context_policy(policy, example):
    """The authors' prompt at exploration and test time: one expert trajectory shown as earlier turns after
    the system message. The records keep only the task's own turns (SFT data and pairs never hold it)."""
    shown = [message for message in example["messages"] if message["role"] != "system"]

    def in_context_policy(conversations, task_ids):
        return policy([conversation[:1] + shown + conversation[1:] for conversation in conversations], task_ids)
    return in_context_policy


def make_forcing_policy(policy, forced_turns):
    """Teacher forcing (step-level pairs): an episode whose task has forced turns left replays them; the
    other episodes of the batch go to `policy` in one call."""
    def forcing_policy(conversations, task_ids):
        turns = [sum(m["role"] == "assistant" for m in conversation) for conversation in conversations]
        free = [i for i, (turn, task_id) in enumerate(zip(turns, task_ids)) if turn >= len(forced_turns[task_id])]
        agent_replies = iter(policy([conversations[i] for i in free], [task_ids[i] for i in free]) if free else [])
        return [next(agent_replies) if i in free else (forced_turns[task_id][turn], True)
                for i, (turn, task_id) in enumerate(zip(turns, task_ids))]
    return forcing_policy


def step_prefixes(expert, task_ids, seed, where="the expert file"):
    """Per task, the expert's first t-1 turns with t drawn uniformly from 2..T (paper App. B: the agent
    acts from step t on; t = 1 is the trajectory level). A task without an expert trajectory is an
    ValueError naming `where` (one line from any stage)."""
    rng = random.Random(seed)
    expert_by_task = {record["task_id"]: record for record in expert}
    missing = sorted(set(task_ids) - set(expert_by_task))
    if missing:
        raise ValueError(f"{where}: no expert trajectory for {len(missing)} tasks, e.g. {missing[0]!r}")
    prefixes = {}
    for task_id in task_ids:
        turns = [m["content"] for m in expert_by_task[task_id]["messages"] if m["role"] == "assistant"]
        prefixes[task_id] = turns[:rng.randrange(1, len(turns))] if len(turns) > 1 else []
    return prefixes
