"""ScienceWorld (Wang et al. 2022), one of the paper's three benchmarks, offline behind our protocol.

Needs the optional `scienceworld` package (it ships its own jar) and a Java runtime (17 works):

    pip install scienceworld            # and, if `java -version` fails: apt-get install openjdk-17-jre-headless

Choices, as in the paper and its authors' setup unless said otherwise:
- Task types: 24 of ScienceWorld's 30. Left out, as by the paper's authors: the three inclined-plane
  tasks, the two Mendelian-genetics tasks and measure-melting-point-unknown-substance.
- Splits: `train` = ScienceWorld's training variations, `test_seen` = its dev variations,
  `test_unseen` = its test variations. Like the paper (1483 / 194 / 241 tasks) we use a subset: at most
  100 train, 8 dev and 10 test variations per task type (PER_TYPE), evenly spaced over each list. `dev` (for choosing
  settings) takes up to 8 further training variations per type that `train` does not use. Sizes with
  scienceworld 1.2.3: train 1248, test_seen 171, test_unseen 211, dev 64 (types with few variations
  give fewer). A task id is "<task type>-<variation>", e.g. "find-animal-12".
- The "easy" simplification (teleport, open doors, self-watering pots, no electrical actions).
- Max steps per task type, 10-120, the values of the authors' setup (MAX_STEPS below), raised for a
  task whose gold path is longer (ScienceWorld's gold paths are not minimal: grow-plant's run 64-75
  steps against a cap of 30), so the expert always fits.
- Reward: the running maximum of the env's score / 100 over the episode (a failed task's -100 does not
  lower it); success is a score of 100.
- Observations: the first is the task description and `look around`; long ones are cut at
  `max_observation_chars` (1000 by default; explore.py --max-observation-chars changes it).
- Expert: ScienceWorld's gold action path (`generateGoldPath=True`), written as ReAct turns whose
  thoughts are templated from the action. The paper had GPT-4 write its thoughts; ours are not.
- Invalid actions (the env's "No known action matches that input.") come back marked `Invalid action`.
- ScienceWorld lists a room's objects in an order that changes between loads of the same task; each
  run of tab-indented lines is sorted, so an episode replays identically (pairs compare prompts).

`make("scienceworld:find-animal,find-plant")` keeps only the listed task types (every split), for
runs that must fit in CPU time. One JVM per env object, started once and reused across episodes (reset loads the next variation:
about a second); rollouts keep one env per active episode.
"""
import json
import os
import sys
from functools import lru_cache

from envs import INVALID, check_split, templated_thought

EXCLUDED = ("inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces",
            "inclined-plane-friction-unnamed-surfaces", "mendelian-genetics-known-plant",
            "mendelian-genetics-unknown-plant", "measure-melting-point-unknown-substance")
MAX_STEPS = {
    "boil": 100, "change-the-state-of-matter-of": 80, "freeze": 80, "melt": 80,
    "measure-melting-point-known-substance": 120, "use-thermometer": 30,
    "power-component": 20, "power-component-renewable-vs-nonrenewable-energy": 30,
    "test-conductivity": 30, "test-conductivity-of-unknown-substances": 30,
    "find-animal": 15, "find-living-thing": 15, "find-non-living-thing": 15, "find-plant": 15,
    "grow-fruit": 60, "grow-plant": 30, "chemistry-mix": 60,
    "chemistry-mix-paint-secondary-color": 15, "chemistry-mix-paint-tertiary-color": 30,
    "lifespan-longest-lived": 10, "lifespan-longest-lived-then-shortest-lived": 12, "lifespan-shortest-lived": 10,
    "identify-life-stages-1": 30, "identify-life-stages-2": 30,
}
PER_TYPE = {"train": 100, "test_seen": 8, "test_unseen": 10, "dev": 8}
SIMPLIFICATION = "easy"
GOLD_TURNS = {}  # task id -> expert turns, shared by the env objects of a process (a load costs seconds)
GOLD_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scienceworld_gold.tsv")
MAX_OBSERVATION_CHARS = 1000
SYSTEM_PROMPT = ("You are an agent in a virtual science lab. Reply 'Thought: ...' then 'Action: ...'. "
                 "Actions include: look around, go to LOCATION, open OBJ, pick up OBJ, move OBJ to OBJ, "
                 "focus on OBJ, use OBJ on OBJ, activate OBJ, pour OBJ into OBJ, mix OBJ, wait, inventory.")


def start_jvm():
    """A ScienceWorld env (its own JVM); a missing package or Java is a clear error."""
    try:
        from scienceworld import ScienceWorldEnv
    except ImportError:
        raise ValueError("the scienceworld env needs the scienceworld package: pip install scienceworld") from None
    try:
        return ScienceWorldEnv("", envStepLimit=1000)
    except Exception as e:  # no java on PATH, or the JVM did not start
        raise ValueError(f"cannot start ScienceWorld's Java runtime ({type(e).__name__}: {e}); install one, "
                         f"e.g. apt-get install openjdk-17-jre-headless") from None


def evenly_spaced(values, k):
    if len(values) <= k:
        return list(values)
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)] if k > 1 else [values[0]]


@lru_cache(maxsize=None)
def split_task_ids():  # every kept task type; an env with task_types filters this
    """{split: [task id, ...]} from ScienceWorld's own train/dev/test variation lists (one JVM, a few seconds)."""
    env = start_jvm()
    by_split = {split: [] for split in PER_TYPE}
    try:
        for task_type in MAX_STEPS:
            env.load(task_type, 0, SIMPLIFICATION)
            train = evenly_spaced(env.get_variations_train(), PER_TYPE["train"])
            unused = [v for v in env.get_variations_train() if v not in set(train)]
            chosen = {"train": train, "test_seen": evenly_spaced(env.get_variations_dev(), PER_TYPE["test_seen"]),
                      "test_unseen": evenly_spaced(env.get_variations_test(), PER_TYPE["test_unseen"]),
                      "dev": evenly_spaced(unused, PER_TYPE["dev"])}
            for split, variations in chosen.items():
                by_split[split] += [f"{task_type}-{v}" for v in variations]
    finally:
        env.close()
    return by_split


@lru_cache(maxsize=None)
def gold_table():
    """{task id: (reward, steps)} of each task's gold path as replayed once (the committed table; a task it
    does not hold yet counts as a success). Built and resumed with `python -m envs.scienceworld`."""
    return read_table(GOLD_TABLE)


def canonical(observation):
    """Sort each run of tab-indented lines: ScienceWorld lists a room's objects in an order that changes
    from one load of the same task to the next, and an episode must replay identically."""
    lines, out = observation.strip().split("\n"), []
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].startswith("\t"):
            j += 1
        if j > i:
            out += sorted(lines[i:j])
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def parse_task_id(task_id):
    task_type, _, variation = task_id.rpartition("-")
    if task_type not in MAX_STEPS or not variation.isdigit():
        raise KeyError(f"unknown scienceworld task id {task_id!r} (expected '<task type>-<variation>')")
    return task_type, int(variation)


def thought_for(action):
    """A short templated thought for an expert action (the paper's were written by GPT-4)."""
    templates = [
        (r"look around", "I should look around to see what is here."),
        (r"(?:go|teleport) to (.+)", "I need to go to the {0}."),
        (r"open (.+)", "I open the {0}."),
        (r"focus on (.+)", "The task is about the {0}, so I focus on it."),
        (r"pick up (.+)", "I take the {0} with me."),
        (r"move (.+?) to (.+)", "I move the {0} to the {1}."),
        (r"pour (.+?) into (.+)", "I pour the {0} into the {1}."),
        (r"use (.+?) on (.+)", "I use the {0} on the {1}."),
        (r"(?:activate|deactivate) (.+)", "I switch the {0}."),
        (r"wait\d*", "I wait for the process to go on."),
        (r"mix (.+)", "I mix the {0}."),
    ]
    return templated_thought(action, templates, "That is the next step of the task.")


class ScienceWorldEnv:
    name = "scienceworld"
    system_prompt = SYSTEM_PROMPT
    max_observation_chars = MAX_OBSERVATION_CHARS
    max_batch = 8  # parallel episodes at most: each env is a JVM of 0.3-1 GB

    def __init__(self, task_types=None):
        unknown = sorted(set(task_types or ()) - set(MAX_STEPS))
        if unknown:
            raise ValueError(f"unknown scienceworld task type {unknown[0]!r}; valid types: {', '.join(MAX_STEPS)}")
        self.task_types = tuple(task_types or MAX_STEPS)
        self.env = start_jvm()
        self.max_steps = max(MAX_STEPS.values())
        self.task_id, self.best = None, 0.0
        self.gold_turns = GOLD_TURNS

    def task_ids(self, split):
        """A split's tasks of this env's types. `train` leaves out the tasks whose gold path does not reach a
        score of 100 (the gold table): the expert data holds successes only, as the authors' did. Test
        splits keep theirs: the expert's ceiling there is below 100."""
        tasks = [t for t in split_task_ids()[check_split(split)] if t.rpartition("-")[0] in self.task_types]
        if split == "train":
            table = gold_table()
            tasks = [t for t in tasks if table.get(t, (1.0, 0))[0] >= 1.0]
        return tasks

    def _call(self, method, *args, **kwargs):
        """A call into the JVM; if the Java process died (e.g. out of memory), one clear error."""
        from py4j.protocol import Py4JNetworkError
        try:
            return getattr(self.env, method)(*args, **kwargs)
        except (ConnectionError, OSError, Py4JNetworkError) as e:
            raise ValueError(f"ScienceWorld's Java process stopped ({type(e).__name__}); out of memory? "
                             f"run fewer episodes in parallel (--batch-size)") from None

    def _load(self, task_id):
        """Load a task with its gold path (about 2 s); the gold path's length sets the step limit."""
        task_type, variation = parse_task_id(task_id)
        self._call("load", task_type, variation, SIMPLIFICATION, generateGoldPath=True)
        observation, info = self._call("reset")
        gold = self._call("get_gold_action_sequence")
        self.gold_turns[task_id] = [f"Thought: {thought_for(action)}\nAction: {action}" for action in gold]
        self.max_steps = max(MAX_STEPS[task_type], len(gold))
        return f"{info['taskDesc'].strip()}\n{canonical(observation)}"

    def reset(self, task_id):
        self.task_id, self.best = task_id, 0.0
        return self._load(task_id)

    def step(self, action):
        if self.task_id is None:
            raise RuntimeError("call reset(task_id) before step()")
        observation, _, done, info = self._call("step", action)
        observation = canonical(observation)
        if observation.startswith("No known action matches that input"):
            observation = f"{INVALID}: {observation}"
        self.best = max(self.best, info["score"] / 100)
        if done:
            self.task_id = None
        return observation, self.best, bool(done)

    def expert(self, task_id):
        if task_id not in self.gold_turns:  # a load costs seconds: once per task
            self._load(task_id)
            self.task_id = None  # this load was only for the gold path: reset() before playing
        return self.gold_turns[task_id]

    def replay_gold(self, task_id):
        """Play the task's gold path to its end: (reward, steps taken). One load."""
        self.reset(task_id)
        reward, steps = 0.0, 0
        for steps, turn in enumerate(self.gold_turns[task_id], 1):
            _, reward, done = self.step(turn.split("\nAction: ", 1)[1])
            if done:
                break
        return reward, steps

    def close(self):
        self.env.close()


def read_table(path):
    """{task id: (reward, steps)} from a gold table file; empty if it is missing."""
    if not os.path.exists(path):
        return {}
    table = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.startswith("task_id"):
                continue
            try:
                task_id, reward, steps = line.rstrip("\n").split("\t")
                table[task_id] = (float(reward), int(steps))
            except ValueError:
                raise ValueError(f"{path}:{number}: expected task_id, reward, steps separated by tabs") from None
    return table


def write_table(rows, out):
    """Write {task id: (reward, steps)} sorted by type and variation, by rename: never half-written."""
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("task_id\treward\tsteps\n")
        for task_id in sorted(rows, key=parse_task_id):
            reward, steps = rows[task_id]
            f.write(f"{task_id}\t{reward:.2f}\t{steps}\n")
    os.replace(tmp, out)


def replay_gold(splits, out=GOLD_TABLE, env=None, shard=(0, 1)):
    """Replay the gold path of every task of `splits` that `out` does not hold yet, rewriting `out` after each
    task: a killed replay resumes where it stopped (~2.5 s a task alone on 2 cores; ~1700 tasks). `shard`
    (i, n) takes every n-th task of `splits` from the i-th, so n processes share the work; merge their
    tables with `--merge`."""
    from tqdm import tqdm
    rows = read_table(out)
    tasks = [t for split in splits for t in split_task_ids()[check_split(split)]][shard[0]::shard[1]]
    todo = [t for t in tasks if t not in rows]  # a shard's tasks never depend on what is done, so it resumes
    env = env or ScienceWorldEnv()
    for task_id in tqdm(todo, desc="gold paths"):
        rows[task_id] = env.replay_gold(task_id)
        write_table(rows, out)
    return rows


def parse_shard(text):
    """'I/N' -> (I, N), 0 <= I < N; anything else is a clear error."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: I must be in 0..N-1")
    return index, count


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Replay ScienceWorld's gold paths into the gold table (resumable).",
                                     epilog="python -m envs.scienceworld train --shard 0/4 --out /tmp/g0.tsv  # 4 such side "
                                            "by side, then: python -m envs.scienceworld --merge /tmp/g*.tsv")
    parser.add_argument("splits", nargs="*", default=["test_seen", "test_unseen", "dev", "train"])
    parser.add_argument("--out", default=GOLD_TABLE, help="table to resume and rewrite (default: the committed one)")
    parser.add_argument("--shard", default="0/1", help="I/N: this process takes every N-th task of the splits, from the I-th")
    parser.add_argument("--merge", nargs="+", metavar="TSV", help="add these tables' rows to --out, and stop")
    args = parser.parse_args()
    try:
        if args.merge:
            rows = read_table(args.out)
            for path in args.merge:
                if not os.path.exists(path):
                    raise ValueError(f"--merge: no such file {path}")
                rows.update(read_table(path))
            write_table(rows, args.out)
            print(json.dumps({"tasks": len(rows), "below_100": sum(r < 1.0 for r, _ in rows.values()), "out": args.out}))
            sys.exit(0)
        shard = parse_shard(args.shard)
        for split in args.splits:
            check_split(split)
        rows = replay_gold(args.splits, args.out, shard=shard)
    except ValueError as e:
        raise SystemExit(str(e))
    done = {t for split in args.splits for t in split_task_ids()[split]} & set(rows)
    print(json.dumps({"tasks": len(done), "below_100": sum(rows[t][0] < 1.0 for t in done), "out": args.out}))


def make(options):
    """`--env scienceworld[:TASK_TYPE,...]`: a subset of the task types (all of them without options)."""
    return ScienceWorldEnv(task_types=options.split(",") if options else None)
