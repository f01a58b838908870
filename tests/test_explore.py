"""The rollout loop: action parsing, invalid-format feedback, batched == one-by-one greedy, the CLI."""
import json
import subprocess
import sys

import pytest
import torch

import envs
from envs.expert import make_expert_policy, make_forcing_policy, make_in_context_policy, step_prefixes
from envs import parse_action
from explore import INVALID_FORMAT, make_generate_policy, rollout, summarize
from sft import build_tiny_model, build_tiny_tokenizer
from tests.conftest import ROOT, run_in_process

ENV = envs.make("shop")


def test_parse_action():
    assert parse_action("Thought: go.\nAction: search[red shoes]") == "search[red shoes]"
    assert parse_action("Action:click[buy now]  ") == "click[buy now]"
    assert parse_action("Thought: a\nAction: click[a]\nAction: click[b]") == "click[b]"  # the last one counts
    assert parse_action("Action: click[x]\nObservation: fake") == "click[x]"
    assert parse_action("Thought: no action here") is None
    assert parse_action("Action:   ") is None


def scripted_policy(replies_by_turn):
    def policy(conversations, task_ids):
        turn = sum(m["role"] == "assistant" for m in conversations[0])
        return [(replies_by_turn[min(turn, len(replies_by_turn) - 1)], True)] * len(conversations)
    return policy


def test_reply_without_action_gets_invalid_format_and_costs_a_step():
    policy = scripted_policy(["I think I will search.", "Thought: ok\nAction: search[cotton t-shirt]",
                              "Thought: hm\nAction: click[nothing]"])
    [record] = rollout("shop", [("train-0", 0)], policy, max_steps=4)
    messages = record["messages"]
    assert messages[3] == {"role": "user", "content": "Observation: " + INVALID_FORMAT}
    assert record["steps"] == 4 and record["stop"] == "max_steps" and record["reward"] == 0.0
    assert record["invalid_actions"] == 3  # the reply with no action, then click[nothing] twice
    assert messages[-1]["role"] == "assistant"


def test_an_episode_ends_after_max_invalid_invalid_actions_in_a_row():
    policy = scripted_policy(["I think I will search.", "Thought: ok\nAction: search[cotton t-shirt]",
                              "Thought: hm\nAction: click[nothing]"])
    # invalid, valid (the count starts over), invalid, invalid: the second in a row ends it at step 4
    [record] = rollout("shop", [("train-0", 0)], policy, max_steps=10, max_invalid=2)
    assert record["steps"] == 4 and record["stop"] == "invalid" and record["invalid_actions"] == 3
    assert record["messages"][-1]["role"] == "assistant"
    [record] = rollout("shop", [("train-0", 0)], policy, max_steps=10, max_invalid=0)  # 0: never
    assert record["steps"] == 10 and record["stop"] == "max_steps"
    assert summarize([{**record, "success": False}])["stops"] == {"done": 0, "max_steps": 1, "invalid": 0, "context": 0}


def test_expert_rollout_records():
    episodes = [(task_id, 0) for task_id in ENV.task_ids("test_unseen")[:20]]
    records = rollout("shop", episodes, make_expert_policy(ENV), batch_size=7)
    for record in records:
        record["success"] = record["reward"] >= 1
    summary = summarize(records)
    assert summary["n"] == 20 and summary["avg_reward"] == 100.0 and summary["invalid_action_rate"] == 0
    first = records[0]
    assert [m["role"] for m in first["messages"][:3]] == ["system", "user", "assistant"]
    assert first["messages"][-1]["role"] == "assistant"
    assert all(m["content"].startswith("Observation: ") for m in first["messages"][3::2])


def random_model():
    """A tiny model with wide random weights: its replies differ per prompt instead of one flat default."""
    torch.manual_seed(0)
    texts = [ENV.reset(t) for t in ENV.task_ids("train")[:50]] + [ENV.system_prompt, "system user assistant"]
    tokenizer = build_tiny_tokenizer(texts + ["Thought: Action: click[buy now] search[shoes]"], 600)
    model = build_tiny_model(tokenizer, hidden=64, layers=2).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.1)
    return model, tokenizer


def test_sampled_rollouts_replay_from_their_seed():
    model, tokenizer = random_model()
    episodes = [(task_id, sample) for task_id in ENV.task_ids("train")[:3] for sample in range(2)]
    def sampled(seed):
        policy = make_generate_policy(model, tokenizer, temperature=1.0, max_new_tokens=10, seed=seed)
        return [r["messages"] for r in rollout("shop", episodes, policy, batch_size=4, max_steps=2)]
    first = sampled(seed=1)
    assert sampled(seed=1) == first
    assert sampled(seed=2) != first
    assert first[0] != first[1]  # two samples of one task differ


def test_batched_greedy_equals_one_by_one():
    model, tokenizer = random_model()
    policy = make_generate_policy(model, tokenizer, max_new_tokens=12)
    episodes = [(task_id, 0) for task_id in ENV.task_ids("test_seen")[:5]]
    batched = rollout("shop", episodes, policy, batch_size=5, max_steps=3)
    single = [rollout("shop", [episode], policy, batch_size=1, max_steps=3)[0] for episode in episodes]
    assert [r["messages"] for r in batched] == [r["messages"] for r in single]
    assert len({r["messages"][2]["content"] for r in batched}) > 1  # the episodes really differ


def briefly_trained_model(steps=10):
    """A tiny model after a few SFT steps on expert data: its replies start 'Thought: ...' and re-tokenize to
    the tokens it generated, so the rollout's KV cache is carried across turns (a random model's are not)."""
    from common import tokenize_conversation
    from sft import masked_nll
    torch.manual_seed(0)
    expert = rollout("shop", [(t, 0) for t in ENV.task_ids("train")[:40]], make_expert_policy(ENV))
    tokenizer = build_tiny_tokenizer([m["content"] for r in expert for m in r["messages"]], 400)
    model = build_tiny_model(tokenizer, hidden=32, layers=1)
    examples = [tokenize_conversation(tokenizer, r["messages"]) for r in expert]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss, count = masked_nll(model, examples[step * 4 % 40:][:4], "cpu")
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


@pytest.mark.parametrize("trained", [False, True])
def test_the_kv_cache_decode_gives_the_plain_decodes_trajectories(trained):
    """explore.py's plain_decode feeds every conversation whole for every token; the cached decode (kept
    within a call, and across turns with reuse_cache) must give the same episodes, greedy and sampled."""
    model, tokenizer = briefly_trained_model() if trained else random_model()
    episodes = [(task_id, 0) for task_id in ENV.task_ids("test_seen")[:6]]
    for temperature in (0.0, 1.0):
        records, stats = {}, {}
        for decode, reuse in (("plain", False), ("cached", False), ("cached", True)):
            policy = make_generate_policy(model, tokenizer, temperature, max_new_tokens=24, seed=5, decode=decode,
                                          reuse_cache=reuse)
            records[decode, reuse] = [r["messages"] for r in rollout("shop", episodes, policy, batch_size=4, max_steps=4)]
            stats[decode, reuse] = policy.stats
        assert records["cached", True] == records["cached", False] == records["plain", False]
        fresh, cached = stats["cached", False], stats["cached", True]
        assert fresh["reused"] == 0 and fresh["fresh"] == cached["fresh"] + cached["reused"]
        if trained and temperature == 0:  # the cache was carried: rows continued, far fewer tokens fed
            assert cached["reused"] >= 6 and cached["prompt_tokens"] < fresh["prompt_tokens"] / 2
        elif not trained:  # a random model's replies re-tokenize differently: every row starts afresh, still correct
            assert cached["reused"] == 0


def test_a_model_that_ignores_the_cache_is_refused_loudly():
    """transformers renamed the cache argument; a model that takes neither name would decode from the new
    token alone (an H100 run scored 0 that way): the policy stops instead of acting on garbage."""
    model, tokenizer = random_model()
    forward = model.forward
    model.forward = lambda input_ids, attention_mask, position_ids, use_cache, **ignored: \
        forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    policy = make_generate_policy(model, tokenizer, max_new_tokens=4)
    with pytest.raises(RuntimeError, match="did not fill the KV cache"):
        policy([[{"role": "user", "content": "hi"}]])


def test_sampling_draws_as_generate_does():
    """The hand-written decode samples like transformers' `generate` (its default top-k 50 included), token for token."""
    from transformers import GenerationConfig
    model, tokenizer = random_model()
    conversations = [[{"role": "user", "content": ENV.reset(t)}] for t in ENV.task_ids("train")[:3]]
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        policy = make_generate_policy(model, tokenizer, temperature=temperature, top_p=top_p, max_new_tokens=8, seed=3)
        ours = policy(conversations)
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        tokenizer.padding_side = "left"
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        torch.manual_seed(3 * 100003)
        config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=temperature, top_p=top_p,
                                  eos_token_id=policy_stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
        output = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:]
        theirs = [tokenizer.decode(row, skip_special_tokens=True).split("\nObservation:")[0].strip() for row in output.tolist()]
        assert [reply for reply, _ in ours] == theirs


def policy_stop_ids(tokenizer):
    from explore import end_of_turn_token
    return sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_expert_sft_eval(tmp_path):
    expert = tmp_path / "expert.jsonl"
    done = run("explore.py", "--env", "shop", "--split", "train", "--expert", "--limit", "60", "--out", str(expert))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["n"] == 60 and summary["avg_reward"] == 100.0
    assert len(expert.read_text().splitlines()) == 60
    model_dir = tmp_path / "sft"
    done = run("sft.py", "--model", "tiny", "--data", str(expert), "--out", str(model_dir), "--epochs", "2",
               "--tiny-hidden", "32", "--tiny-layers", "1", "--batch-size", "8", "--micro-batch-size", "4")
    assert done.returncode == 0, done.stderr
    assert (model_dir / "model.safetensors").exists() and (model_dir / "args.json").exists()
    assert json.loads(done.stdout.strip().splitlines()[-1])["epochs"] == 2
    assert json.loads((model_dir / "args.json").read_text())["args"]["lr"] == 3e-3  # from scratch: tiny's lr
    tuned = tmp_path / "tuned"  # a loaded model trains at the paper's lr unless told otherwise, never at tiny's
    done = run("sft.py", "--model", str(model_dir), "--data", str(expert), "--out", str(tuned), "--patience", "0",
               "--batch-size", "8", "--micro-batch-size", "8", "--dev-fraction", "0")
    assert done.returncode == 0, done.stderr
    recorded = json.loads((tuned / "args.json").read_text())["args"]
    assert (recorded["lr"], recorded["epochs"]) == (1e-5, 3)
    evaluation = tmp_path / "eval.jsonl"
    done = run("explore.py", "--split", "test_unseen", "--model", str(model_dir), "--limit", "4",
               "--max-new-tokens", "16", "--max-steps", "2", "--out", str(evaluation))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in evaluation.read_text().splitlines()]
    assert len(records) == 4 and all(r["steps"] <= 2 and r["temperature"] == 0.0 for r in records)
    shown = tmp_path / "shown.jsonl"
    done = run("explore.py", "--split", "test_unseen", "--model", str(model_dir), "--limit", "4", "--in-context",
               str(expert), "--max-new-tokens", "16", "--max-steps", "2", "--out", str(shown))
    assert done.returncode == 0, done.stderr
    with_example = [json.loads(line) for line in shown.read_text().splitlines()]
    assert all(r["in_context"] == "train-0" for r in with_example)  # recorded, but not in the task's own turns:
    assert [r["messages"][:2] for r in with_example] == [r["messages"][:2] for r in records]


def test_the_in_context_example_comes_between_the_system_message_and_the_task():
    example = {"task_id": "train-0", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "ex task"},
                                                 {"role": "assistant", "content": "Thought: x\nAction: click[a]"}]}
    seen = []

    def inner(conversations, task_ids):
        seen.extend(conversations)
        return [("Thought: done\nAction: click[nothing]", True)] * len(conversations)
    [record] = rollout("shop", [("test_unseen-0", 0)], make_in_context_policy(inner, example), max_steps=1)
    assert [m["content"] for m in seen[0][:3]] == [ENV.system_prompt, "ex task", "Thought: x\nAction: click[a]"]
    assert seen[0][3] == record["messages"][1] and len(seen[0]) == 4
    assert "ex task" not in json.dumps(record["messages"])


@pytest.mark.parametrize("args, message", [
    (["--env", "webshop", "--expert"], "unknown env 'webshop'; valid envs: " + ", ".join(envs.available())),
    (["--split", "valid", "--expert"], "unknown split 'valid'; valid splits: train, test_seen, test_unseen, dev"),
    (["--model", "no/such/folder"], "cannot load model 'no/such/folder'"),
    (["--model", "no/such/model.gguf"], "cannot load model 'no/such/model.gguf': no such file"),
    (["--expert", "--skip", "1000"], "--skip 1000 leaves no task: split 'train' has 1000"),
    (["--expert", "--teacher-force", "e.jsonl"], "--teacher-force replays the expert before the agent acts"),
    (["--expert", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--expert", "--max-invalid", "-1"], "--max-invalid must be at least 0, got -1"),
    (["--expert", "--max-steps", "0"], "--max-steps must be at least 1, got 0"),
    (["--expert", "--in-context", "e.jsonl"], "--in-context shows an example to a model: it needs --model"),
    (["--model", "m", "--samples", "2"], "--samples > 1 needs --temperature > 0"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message, monkeypatch, capsys):
    out = tmp_path / "x.jsonl"  # in process: the CLI's own path through run_main (test_cli_expert_sft_eval runs the shell's)
    code, stderr = run_in_process("explore.py", *args, "--out", str(out), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr and not out.exists()


@pytest.mark.parametrize("script, content, message", [
    ("sft.py", '{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', ":2: not valid JSON"),
    ("sft.py", '{"text": "hi"}\n', ":1: missing field 'messages'"),
    ("sft.py", "", ": the file holds no records"),
    ("sft.py", '{"messages": [{"role": "assistant", "content": "hi"}]}\n', ":1: messages: message 0 (assistant) is out of order"),
    ("sft.py", '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n',
     ":1: messages: message 1 (user) is out of order"),
    ("dpo.py", '{"prompt": [{"role": "user", "content": "hi"}], "chosen": []}\n', ":1: missing field 'rejected'"),
    ("dpo.py", "\n\n", ": the file holds no records"),
    ("dpo.py", '{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}], '
               '"rejected": [{"role": "assistant", "content": "b"}]}\n', ":1: chosen: message 0 (user) is out of order"),
])
def test_bad_training_files_fail_in_one_line_before_any_model_loads(tmp_path, script, content, message, monkeypatch,
                                                                     capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    flag = "--data" if script == "sft.py" else "--pairs"
    extra = [] if script == "sft.py" else ["--model", "no/such/model"]  # never reached: the file fails first
    code, stderr = run_in_process(script, flag, str(data), "--out", str(tmp_path / "out"), *extra,
                                  monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and f"{data}{message}" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_expert_file_missing_tasks_fails_before_any_rollout_or_pairing(tmp_path):
    expert = tmp_path / "expert.jsonl"
    done = run("explore.py", "--expert", "--limit", "3", "--out", str(expert))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "explore.jsonl"
    done = run("explore.py", "--model", "no/such/model", "--limit", "5", "--out", str(out), "--teacher-force", str(expert))
    assert done.returncode == 2 and "no expert trajectory for 2 tasks, e.g. 'train-3'" in done.stderr
    assert not out.exists()
    done = run("explore.py", "--expert", "--limit", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    pairs = tmp_path / "pairs.jsonl"
    done = run("pairs.py", "--explored", str(out), "--expert", str(expert), "--out", str(pairs))
    assert done.returncode == 2 and "no expert trajectory for 2 tasks, e.g. 'train-3'" in done.stderr
    assert not pairs.exists() and "Traceback" not in done.stderr


def test_an_episode_that_outgrows_the_context_ends_alone():
    model, tokenizer = random_model()
    model.config.max_position_embeddings = 150  # the policy reads the context length from the config
    policy = make_generate_policy(model, tokenizer, max_new_tokens=12)
    long_prompt = [{"role": "user", "content": "word " * 200}]
    short_prompt = [{"role": "user", "content": "hi"}]
    replies = policy([long_prompt, short_prompt, long_prompt])
    assert replies[0] is None and replies[2] is None and replies[1] is not None
    [record] = rollout("shop", [("train-0", 0)], policy, max_steps=10)
    assert record["stop"] == "context" and 0 < record["steps"] < 10 and record["reward"] == 0.0


def test_step_level_rollouts_replay_the_expert_prefix_then_the_agent_acts():
    task_ids = ENV.task_ids("train")[:12]
    expert = rollout("shop", [(t, 0) for t in task_ids], make_expert_policy(ENV))
    prefixes = step_prefixes(expert, task_ids, seed=0)
    assert prefixes != step_prefixes(expert, task_ids, seed=1)  # t is drawn from the seed
    lengths = {t: sum(m["role"] == "assistant" for m in r["messages"]) for t, r in zip(task_ids, expert)}
    assert all(1 <= len(prefixes[t]) <= lengths[t] - 1 for t in task_ids)
    assert len({len(p) for p in prefixes.values()}) > 1  # t varies across tasks
    asked = []  # (task, replies already in the conversation) at each call of the agent
    def agent(conversations, ids):  # buys at once, whatever the page
        asked.extend((task_id, sum(m["role"] == "assistant" for m in c)) for task_id, c in zip(ids, conversations))
        return [("Thought: done\nAction: click[buy now]", True)] * len(conversations)
    records = rollout("shop", [(t, 0) for t in task_ids], make_forcing_policy(agent, prefixes), batch_size=5)
    for record, expert_record in zip(records, expert):
        forced = len(prefixes[record["task_id"]])
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert replies[:forced] == [m["content"] for m in expert_record["messages"] if m["role"] == "assistant"][:forced]
        assert replies[forced].endswith("click[buy now]")
    # the agent acted in every episode, and first when its forced turns were done (never before)
    first_turn = {}
    for task_id, turn in asked:
        first_turn[task_id] = min(turn, first_turn.get(task_id, turn))
    assert first_turn == {t: len(prefixes[t]) for t in task_ids}


def test_the_growing_cache_holds_what_concatenation_holds():
    """GrowingLayer writes into buffers that double when full; what it returns must be what
    transformers' concatenating DynamicLayer returns, through regrowth and a batch selection."""
    from transformers.cache_utils import DynamicLayer

    from plumbing.decode import GrowingLayer
    torch.manual_seed(0)
    growing, concatenating, rows = GrowingLayer(), DynamicLayer(), 3
    for step, added in enumerate([300, 1, 1, 200, 1, 400, 1]):  # 300 fits the first room (600); 400 regrows it
        if step == 4:  # a call that continues rows 2 and 0 only
            keep, rows = torch.tensor([2, 0]), 2
            growing.batch_select_indices(keep), concatenating.batch_select_indices(keep)
        keys, values = torch.randn(rows, 2, added, 4), torch.randn(rows, 2, added, 4)
        got, expected = growing.update(keys, values), concatenating.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert growing.get_seq_length() == concatenating.get_seq_length()
