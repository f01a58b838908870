"""A WebShop-style shopping environment in pure Python: nothing to download, ~0.1 ms a step.

The agent reads an instruction ("i need a pair of waterproof lightweight running shoes in size 8 and
color black, and price lower than 50.00 dollars"), searches, reads a results page, opens a product,
clicks its options and buys. Actions use WebShop's syntax:

    search[waterproof lightweight running shoes]     only on the search page
    click[item 3]                                    a result on the results page (numbered 1-25)
    click[8]  click[black]                           an option value on the product page
    click[buy now]  click[next >]  click[< prev]  click[back to search]

Catalog: 10 categories x 35 attribute triples x 3 products = 1050 products, generated from a fixed
seed. Every title lists its product's three attributes, so near-duplicates differ by one word or by
price, and picking the right result takes reading the whole line. Every product of a category offers
all of the category's option values.

Search ranks by the number of query words in the title plus a deterministic jitter in [0, 1), so a
product missing one requested attribute can outrank a full match: the first result is often wrong.
Results are numbered by rank ([item 1] ... [item 25]), as element ids are in WebArena, rather than
shown by a catalog id as in WebShop: a model trained from scratch memorizes catalog ids instead of
copying them, which turns test_unseen into a recall test (measured: 168 of 200 unseen failures were
an invented id). With rank numbers, picking the item means reading the titles and prices.

Reward at click[buy now] (WebShop, Yao et al. 2022):
    r = r_type * (|U_att & Y_att| + |U_opt & Y_opt| + 1[price <= cap]) / (|U_att| + |U_opt| + 1)
U = what the instruction asks, Y = the bought product and the options clicked before buying (the last
click of an option type counts); r_type = 1 for the right category, 0.1 otherwise. 0 if steps run out.

Splits: a task asks for two attributes of one category. Per category, 4 of the 21 attribute pairs are
held out: `test_unseen` uses only those (every word in them still occurs in `train`), `train`,
`test_seen` and `dev` (carved like test_seen, for choosing settings; the test splits only report) only
the other 17. No task (category, attributes, options, price cap) occurs twice.
The expert searches for the requested attributes, clicks the first result that has all of them under
the price cap, clicks each requested option and buys: reward 1.0 on every task.
"""
import itertools
import random
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

from envs import INVALID, check_split

MAX_STEPS = 10
RESULTS_PER_PAGE = 5
MAX_RESULTS = 25
SPLIT_SIZES = {"train": 1000, "test_seen": 200, "test_unseen": 200, "dev": 200}  # drawn in this order
THOUGHTS = ("short", "scan")
CUES = ("price", "attribute")  # what makes a result above the right one wrong: see tasks()  # the expert's thought on the results page: see ShopEnv.expert
HELD_OUT_PAIRS = 4  # attribute pairs per category reserved for test_unseen
CATALOG_SEED, TASK_SEED = 0, 1

# category -> (article, attributes, options, price range in dollars)
CATEGORIES = {
    "running shoes": ("a pair of", ["waterproof", "non slip", "lightweight", "breathable", "memory foam", "wide fit", "leather"],
                      {"size": ["6", "7", "8", "9", "10", "11"], "color": ["black", "white", "grey", "blue"]}, (20, 120)),
    "t-shirt": ("a", ["cotton", "slim fit", "long sleeve", "v neck", "quick dry", "machine wash", "organic"],
                {"size": ["small", "medium", "large", "x-large"], "color": ["black", "white", "red", "green"]}, (8, 40)),
    "backpack": ("a", ["waterproof", "laptop sleeve", "lightweight", "anti theft", "usb charging", "large capacity", "leather"],
                 {"color": ["black", "grey", "blue", "green", "red"]}, (20, 90)),
    "headphones": ("a pair of", ["wireless", "noise cancelling", "over ear", "bluetooth", "long battery", "foldable", "waterproof"],
                   {"color": ["black", "white", "silver", "blue"]}, (20, 200)),
    "coffee": ("some", ["organic", "decaf", "dark roast", "whole bean", "fair trade", "low acid", "vegan"],
               {"size": ["12 oz", "2 lb", "5 lb"]}, (8, 50)),
    "shampoo": ("a bottle of", ["sulfate free", "paraben free", "for dry hair", "natural", "vegan", "tea tree", "organic"],
                {"size": ["8 oz", "16 oz", "32 oz"]}, (6, 40)),
    "phone case": ("a", ["shockproof", "slim fit", "clear", "magnetic", "wallet", "kickstand", "leather"],
                   {"color": ["black", "clear", "pink", "blue", "green"]}, (8, 50)),
    "jacket": ("a", ["waterproof", "hooded", "fleece lined", "windproof", "packable", "insulated", "lightweight"],
               {"size": ["small", "medium", "large", "x-large"], "color": ["black", "navy", "green", "red"]}, (40, 200)),
    "desk lamp": ("a", ["led", "dimmable", "usb charging", "touch control", "eye care", "clamp", "wireless"],
                  {"color": ["black", "white", "silver"]}, (15, 80)),
    "yoga mat": ("a", ["non slip", "extra thick", "eco friendly", "lightweight", "with strap", "foldable", "natural"],
                 {"color": ["purple", "blue", "black", "pink", "green"]}, (15, 90)),
}
TEMPLATES = [
    "i need {article} {attributes} {category} in {options}, and price lower than {cap:.2f} dollars",
    "i am looking for {attributes} {category} with {options}, and price lower than {cap:.2f} dollars",
    "find me {article} {attributes} {category} in {options}, with a price lower than {cap:.2f} dollars",
]
SYSTEM_PROMPT = ("Reply 'Thought: ...' then 'Action: ...'. Actions: search[query], "
                 "click[item N, option, buy now, next >, < prev, back to search].")


@dataclass(frozen=True)
class Product:
    id: str
    category: str
    attributes: tuple
    price: float
    title: str


@dataclass(frozen=True)
class Task:
    id: str
    category: str
    attributes: tuple
    options: tuple  # ((option type, value), ...)
    cap: float
    instruction: str
    query: str
    target: str  # the product the expert buys


def stable_hash(*parts):
    return zlib.crc32("|".join(map(str, parts)).encode())


@lru_cache(maxsize=None)
def catalog():
    rng = random.Random(CATALOG_SEED)
    letters, products, used = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", [], set()
    for category, (_, attributes, _, (low, high)) in CATEGORIES.items():
        for triple in itertools.combinations(attributes, 3):
            for _ in range(3):
                pid = "B0" + "".join(rng.choice(letters) for _ in range(3))
                while pid in used:
                    pid = "B0" + "".join(rng.choice(letters) for _ in range(3))
                used.add(pid)
                order = rng.sample(triple, 3)
                products.append(Product(pid, category, tuple(sorted(triple)), round(rng.uniform(low, high), 2),
                                        " ".join(order) + " " + category))
    return {p.id: p for p in products}


@lru_cache(maxsize=None)
def title_index():
    """{title word: ids of the catalog's products with that word in their title}, built once."""
    index = {}
    for product in catalog().values():
        for word in set(product.title.split()):
            index.setdefault(word, []).append(product.id)
    return index


def search(query, products=None):
    """Product ids ranked by query words found in the title, plus a deterministic jitter in [0, 1)."""
    words = set(re.findall(r"[a-z0-9\-]+", query.lower()))
    if products is None:  # the catalog: only products sharing a word can score (every task's search runs this)
        products = catalog()
        candidates = {pid for word in words for pid in title_index().get(word, ())}
    else:
        candidates = products
    by_overlap = {}
    for pid in candidates:
        overlap = len(words & set(products[pid].title.split()))
        if overlap:
            by_overlap.setdefault(overlap, []).append(pid)
    # the jitter is below 1, so more words found always ranks first: jitter only the levels the results reach
    ranked = []
    for overlap in sorted(by_overlap, reverse=True):
        if len(ranked) >= MAX_RESULTS:
            break
        ranked += sorted(((overlap + stable_hash(query, pid) % 1000 / 1000, pid) for pid in by_overlap[overlap]),
                         reverse=True)  # (score, id): a total order, whatever order the candidates came in
    return [pid for _, pid in ranked[:MAX_RESULTS]]


def satisfies(product, task):
    return (product.category == task.category and set(task.attributes) <= set(product.attributes)
            and product.price <= task.cap)


def purchase_reward(task, product, chosen_options):
    """WebShop's reward for buying `product` with `chosen_options` ({type: value}) under `task`."""
    r_type = 1.0 if product.category == task.category else 0.1
    matched_attributes = len(set(task.attributes) & set(product.attributes))
    matched_options = sum(chosen_options.get(kind) == value for kind, value in task.options)
    price_ok = int(product.price <= task.cap)
    return r_type * (matched_attributes + matched_options + price_ok) / (len(task.attributes) + len(task.options) + 1)


@lru_cache(maxsize=None)
def tasks(train_size=SPLIT_SIZES["train"], cue="price"):
    """All tasks by split: {split: [Task, ...]}, generated once from TASK_SEED. A larger `train_size` draws
    the extra train tasks after every other split, so the other splits and the first 1000 stay the same.

    `cue` is what separates the right result from the ones above it. "price": the instruction asks for two
    attributes and the search is for both, so every first-page result has them and a wrong one is wrong by
    its price over the cap. "attribute": the instruction asks for three attributes, the search is for the
    first two, and every first-page result is within the cap, so a wrong one is wrong by a word: its title
    lacks the third attribute, which the right result's title carries (a match a model can make by copying).
    The split rules (held-out pairs, seen combinations) hold for the searched pair."""
    rng = random.Random(TASK_SEED)
    products = catalog()
    held_out, kept = {}, {}
    for category, (_, attributes, _, _) in CATEGORIES.items():
        pairs = list(itertools.combinations(attributes, 2))
        rng.shuffle(pairs)
        held_out[category], kept[category] = pairs[:HELD_OUT_PAIRS], pairs[HELD_OUT_PAIRS:]
    seen_keys, by_split = set(), {}
    extra = [("train", train_size - SPLIT_SIZES["train"])] if train_size > SPLIT_SIZES["train"] else []
    for split, size in list(SPLIT_SIZES.items()) + extra:
        pair_pool = held_out if split == "test_unseen" else kept
        split_tasks = by_split.get(split, []) if split == "train" else []
        target_size = len(split_tasks) + size
        while len(split_tasks) < target_size:
            category = rng.choice(sorted(CATEGORIES))
            article, _, option_values, (low, high) = CATEGORIES[category]
            attributes = tuple(rng.sample(rng.choice(pair_pool[category]), 2))
            query = " ".join(attributes) + " " + category  # the searched pair
            if cue == "attribute":
                attributes += (rng.choice([a for a in CATEGORIES[category][1] if a not in attributes]),)
            options = tuple((kind, rng.choice(values)) for kind, values in option_values.items())
            cap = float(rng.randrange(low + 10, high + 1, 10) if high - low > 10 else high)
            key = (category, tuple(sorted(attributes)), options, cap)
            first_page = [products[pid] for pid in search(query)[:RESULTS_PER_PAGE]]
            target = next((p for p in first_page if satisfies(p, Task("", category, attributes, options, cap, "", "", ""))), None)
            if cue == "attribute" and any(p.price > cap for p in first_page):
                continue  # the price must not separate any two results: the cue is the word alone
            if split in ("test_seen", "dev") and (category, frozenset(attributes[:2])) not in train_combinations:
                continue  # test_seen and dev ask only for combinations that train has
            if key in seen_keys or target is None:
                continue  # a duplicate, or the first page holds no right answer: draw again
            seen_keys.add(key)
            instruction = rng.choice(TEMPLATES).format(
                article=article, attributes=" ".join(attributes), category=category, cap=cap,
                options=" and ".join(f"{kind} {value}" for kind, value in options))
            split_tasks.append(Task(f"{split}-{len(split_tasks)}", category, attributes, options, cap,
                                    instruction, query, target.id))
        by_split[split] = split_tasks
        if split == "train" and "test_seen" not in by_split:
            train_combinations = {(t.category, frozenset(t.attributes[:2])) for t in split_tasks}
    return by_split


class ShopEnv:
    name = "shop"
    max_steps = MAX_STEPS
    system_prompt = SYSTEM_PROMPT

    def __init__(self, thoughts="short", instruction_on_every_page=False, train_size=SPLIT_SIZES["train"], cue="price"):
        self.thoughts, self.instruction_on_every_page, self.train_size = thoughts, instruction_on_every_page, train_size
        self.cue = cue
        self.products = catalog()
        self.tasks = {task.id: task for split_tasks in tasks(train_size, cue).values() for task in split_tasks}
        self.task = None

    def task_ids(self, split):
        return [task.id for task in tasks(self.train_size, self.cue)[check_split(split)]]

    def reset(self, task_id):
        if task_id not in self.tasks:
            raise KeyError(f"unknown shop task id {task_id!r}")
        self.task = self.tasks[task_id]
        self.page, self.results, self.result_page, self.product, self.chosen = "search", [], 0, None, {}
        return self._render()

    # ---- pages --------------------------------------------------------------------------------
    def _render(self):
        instruction = f"Instruction: {self.task.instruction}\n"
        if self.page == "search":
            return f"{instruction}[search]"
        page = self._render_page()
        return instruction + page if self.instruction_on_every_page else page

    def _render_page(self):
        if self.page == "results":
            pages = max(1, -(-len(self.results) // RESULTS_PER_PAGE))
            links = "[back to search]" + (" [< prev]" if self.result_page else "") + \
                    (" [next >]" if self.result_page + 1 < pages else "")
            lines = [f"Page {self.result_page + 1} of {pages}. {links}"]
            start = self.result_page * RESULTS_PER_PAGE
            for rank, pid in enumerate(self._visible_results(), start + 1):
                product = self.products[pid]
                lines.append(f"[item {rank}] {product.title} ${product.price:.2f}")
            return "\n".join(lines)
        product = self.product
        lines = ["[back to search] [< prev]", product.title, f"price: ${product.price:.2f}"]
        for kind, values in CATEGORIES[product.category][2].items():
            lines.append(f"{kind}: " + " ".join(f"[{value}]" for value in values))
        return "\n".join(lines + ["[buy now]"])

    def _visible_results(self):
        start = self.result_page * RESULTS_PER_PAGE
        return self.results[start:start + RESULTS_PER_PAGE]

    # ---- actions ------------------------------------------------------------------------------
    def step(self, action):
        """Apply `action`; returns (observation, reward, done). Never raises on a bad action."""
        if self.task is None:
            raise RuntimeError("call reset(task_id) before step()")
        match = re.fullmatch(r"\s*(search|click)\[(.*)\]\s*", action or "", flags=re.S)
        if not match:
            return f"{INVALID}: {action!r} is not search[...] or click[...].", 0.0, False
        verb, argument = match.group(1), match.group(2).strip().lower()
        if verb == "search":
            if self.page != "search":
                return f"{INVALID}: search only works on the search page; click [back to search] first.", 0.0, False
            if not argument:
                return f"{INVALID}: the search query is empty.", 0.0, False
            self.page, self.results, self.result_page = "results", search(argument), 0
            return self._render(), 0.0, False
        if argument == "back to search" and self.page != "search":
            self.page, self.product = "search", None
            return self._render(), 0.0, False
        if self.page == "results":
            start = self.result_page * RESULTS_PER_PAGE
            visible = {f"item {rank}": pid for rank, pid in enumerate(self._visible_results(), start + 1)}
            if argument == "next >" and (self.result_page + 1) * RESULTS_PER_PAGE < len(self.results):
                self.result_page += 1
                return self._render(), 0.0, False
            if argument == "< prev" and self.result_page > 0:
                self.result_page -= 1
                return self._render(), 0.0, False
            if argument in visible:
                self.page, self.product, self.chosen = "product", self.products[visible[argument]], {}
                return self._render(), 0.0, False
        elif self.page == "product":
            if argument == "< prev":
                self.page, self.product = "results", None
                return self._render(), 0.0, False
            if argument == "buy now":
                reward = purchase_reward(self.task, self.product, self.chosen)
                self.task = None  # the episode is over
                return f"Thank you for shopping with us! Your score: {reward:.2f}", reward, True
            for kind, values in CATEGORIES[self.product.category][2].items():
                if argument in values:
                    self.chosen[kind] = argument
                    return f"You have selected {kind} {argument}.", 0.0, False
        return f"{INVALID}: [{argument}] is not on this page.", 0.0, False

    # ---- expert -------------------------------------------------------------------------------
    def expert(self, task_id):
        """The expert's turns. Its thought on the results page is `short` ("item 3 has both and costs $41.10":
        the choice, stated) or `scan` (`make("shop:scan")`): every result above the choice gets the reason it
        was passed over ("item 1 lacks wallet. item 2 costs $52.10, over 48.00."), so the choice is reached by
        one short check a line, written out before the action, as a chain-of-thought would."""
        task = self.tasks[task_id]
        wanted = " and ".join(task.attributes)
        ranked = search(task.query)
        rank = ranked.index(task.target) + 1  # the target is on the first results page
        checks = ""
        if self.thoughts == "scan":
            checks = " ".join(f"item {k} {self._passed_over_because(self.products[pid], task)}."
                              for k, pid in enumerate(ranked[:rank - 1], 1)) + (" " if rank > 1 else "")
        turns = [f"Thought: I need {' '.join(task.attributes)} {task.category} under {task.cap:.2f} dollars. "
                 f"I will search for it.\nAction: search[{task.query}]",
                 f"Thought: I need {wanted} under {task.cap:.2f} dollars; {checks}item {rank} has "
                 f"{'both' if len(task.attributes) == 2 else 'all three'} and costs "
                 f"${self.products[task.target].price:.2f}.\nAction: click[item {rank}]"]
        for kind, value in task.options:
            turns.append(f"Thought: I need {kind} {value}.\nAction: click[{value}]")
        turns.append("Thought: Every option is chosen. I will buy it.\nAction: click[buy now]")
        return turns

    @staticmethod
    def _passed_over_because(product, task):
        if product.category != task.category:
            return f"is a {product.category}"
        missing = [a for a in task.attributes if a not in product.attributes]
        if missing:
            return f"lacks {missing[0]}"
        return f"costs ${product.price:.2f}, over {task.cap:.2f}"


def make(options):
    """`--env shop[:OPTIONS]`. Options, comma-separated: `scan` (the expert's thought names why each result above
    its choice is passed over), `instruction` (every page repeats the instruction, as WebShop's pages do),
    `train=N` (N train tasks instead of 1000; the extra ones are drawn after the other splits, which stay the
    same), `cue=price` (the default) or `cue=attribute`: what makes a result above the right one wrong (its
    price over the cap, or a requested attribute its title lacks; see `tasks`)."""
    settings = {"thoughts": "short", "instruction_on_every_page": False, "train_size": SPLIT_SIZES["train"],
                "cue": "price"}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if option == "scan":
            settings["thoughts"] = "scan"
        elif option == "instruction":
            settings["instruction_on_every_page"] = True
        elif key == "train" and value.isdigit() and int(value) >= SPLIT_SIZES["train"]:
            settings["train_size"] = int(value)
        elif key == "cue" and value in CUES:
            settings["cue"] = value
        else:
            raise ValueError(f"unknown shop option {option!r}; valid: scan, instruction, train=N (N >= 1000), "
                             f"cue={'|'.join(CUES)}")
    return ShopEnv(**settings)
