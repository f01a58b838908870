"""A household env, the kind of task the paper's ALFWorld is: tidy a room by text commands, offline.

ALFWorld's game files cannot be downloaded here (its wheel ships only the PDDL domain), so this env is
TextWorld Commonsense (`twc`) from TextWorldExpress (Jansen & Cote 2022), which ships its own jar on
PyPI and runs a step in about a millisecond:

    pip install -r requirements-household.txt     # textworld-express; needs Java, as ScienceWorld does

The agent is in one room with two objects out of place ("a clean blue T-shirt" on the floor) and must
put each where it belongs ("put clean blue T-shirt in wardrobe"), opening containers as needed. That
takes knowing where things go, which a model learns from the train tasks.
- Splits: TextWorldExpress's twc folds hold disjoint objects. `train` (720 tasks), `dev` (140) and
  `test_seen` (140) are disjoint seed ranges of its train fold: the same objects, in other rooms and
  combinations. `test_unseen` (140) is its test fold: objects never seen in training, as ALFWorld's
  unseen split holds unseen rooms. A task id is "FOLD-SEED", e.g. "train-17".
- Reward: the env's score (a quarter per object taken, a quarter per object put away, for two
  objects) -- the running maximum; success is a full score. At most MAX_STEPS = 40 actions, as ALFWorld;
  an episode also ends after MAX_INVALID = 5 invalid actions in a row (explore.py --max-invalid). A failed
  episode otherwise runs on to the context limit. Of 2300 dev and train episodes of the SFT models, none
  that succeeded was ever that stuck, and 7 put an object away after it; on dev (140 tasks) every reward
  stays the same and the evaluation takes 76 s instead of 119 s.
- Observations: the first is the task and the room's description; each step's reply is short. Valid
  actions are not listed by default, as the authors' ALFWorld prompt does not list them; the option
  `household:valid` ends every observation with "Valid actions: ..." (the env's list, sorted), which
  about doubles an expert trajectory's tokens (docs/environments.md has both measured).
- Expert: TextWorldExpress's gold path (its first action, `look around`, is the first observation
  already), written as ReAct turns with thoughts templated from each action (not written by a model).
  Every gold path reaches a full score (tests check a sample of every split).
"""
from envs import INVALID, check_split, templated_thought

GAME_PARAMS = "numLocations=1,numItemsToPutAway=2,includeDoors=0,limitInventorySize=0"
MAX_STEPS = 40
MAX_INVALID = 5
SPLIT_RANGES = {"train": ("train", 0, 720), "dev": ("train", 720, 140), "test_seen": ("train", 860, 140),
          "test_unseen": ("test", 0, 140)}  # split -> (TextWorldExpress fold, first seed index, count)
SYSTEM_PROMPT = ("You are tidying a house. Put every object that is out of place where it belongs. Reply "
                 "'Thought: ...' then 'Action: ...'. Actions: look around, inventory, take OBJ, open OBJ, "
                 "close OBJ, put OBJ in CONTAINER, put OBJ on SUPPORTER.")


def start_jvm():
    try:
        from textworld_express import TextWorldExpressEnv
    except ImportError:
        raise ValueError("the household env needs textworld-express: pip install -r requirements-household.txt") from None
    try:
        env = TextWorldExpressEnv(envStepLimit=MAX_STEPS + 10)
        env.load(gameName="twc", gameParams=GAME_PARAMS)
    except Exception as e:  # no java on PATH, or the JVM did not start
        raise ValueError(f"cannot start TextWorldExpress's Java runtime ({type(e).__name__}: {e}); install one, "
                         f"e.g. apt-get install openjdk-17-jre-headless") from None
    return env


def thought_for(action):
    """A templated thought for a gold action."""
    return templated_thought(action, [(r"take (.+)", "The {0} is out of place. I pick it up."),
                                      (r"open (.+)", "I open the {0} to put things in it."),
                                      (r"put (.+?) (in|on) (.+)", "The {0} belongs {1} the {2}.")],
                             "That is the next step.")


class HouseholdEnv:
    name = "household"
    system_prompt = SYSTEM_PROMPT
    max_steps = MAX_STEPS
    max_invalid = MAX_INVALID
    max_batch = 16  # parallel episodes at most: each env is a small JVM

    def __init__(self, list_valid_actions=False):
        self.env = start_jvm()
        self.list_valid_actions = list_valid_actions
        self.task_id, self.best, self.gold = None, 0.0, {}

    def _with_valid_actions(self, observation, info):
        if not self.list_valid_actions:
            return observation
        return f"{observation}\nValid actions: {', '.join(sorted(info['validActions']))}"

    def task_ids(self, split):
        fold, first, count = SPLIT_RANGES[check_split(split)]
        seeds = self.env.getValidSeedsTrain() if fold == "train" else self.env.getValidSeedsTest()
        return [f"{fold}-{seed}" for seed in seeds[first:first + count]]

    def _load(self, task_id):
        fold, _, seed = task_id.partition("-")
        if fold not in ("train", "test") or not seed.isdigit():
            raise KeyError(f"unknown household task id {task_id!r}")
        observation, info = self.env.reset(seed=int(seed), gameFold=fold, generateGoldPath=True)
        self.gold[task_id] = self.env.getGoldActionSequence()[1:]  # the first, look around, is the first observation
        return self._with_valid_actions(f"{info['taskDescription'].strip()}\n{observation.strip()}", info)

    def reset(self, task_id):
        self.task_id, self.best = task_id, 0.0
        return self._load(task_id)

    def step(self, action):
        if self.task_id is None:
            raise RuntimeError("call reset(task_id) before step()")
        observation, _, done, info = self.env.step(action)
        observation = observation.strip()
        if observation.startswith("Unknown action"):  # the env's answer to anything it cannot parse or apply
            observation = f"{INVALID}: {observation}"
        self.best = max(self.best, info["score"])
        done = bool(done or info["tasksuccess"] or info["taskfailure"])
        if done:
            self.task_id = None
        return self._with_valid_actions(observation, info), self.best, done

    def expert(self, task_id):
        if task_id not in self.gold:
            self._load(task_id)  # a millisecond; it ends an episode in progress on this env object
            self.task_id = None
        return [f"Thought: {thought_for(action)}\nAction: {action}" for action in self.gold[task_id]]


def make(options):
    """`--env household[:valid]`. Option `valid`: every observation ends with the env's list of valid actions."""
    if options not in ("", "valid"):
        raise ValueError(f"unknown household option {options!r}; valid: valid")
    return HouseholdEnv(list_valid_actions=options == "valid")
