"""research/bench.py: the work each stage ran through the model, by role, counted by hand."""
import json

from research.bench import role_tokens, stage_work
from sft import build_tiny_tokenizer

# a byte-level tokenizer that learned no merges: every byte of the rendered text is one token, and each
# special token (<|im_start|>, <|im_end|>) is one, so every count below is a count of characters
TOKENIZER = build_tiny_tokenizer(["x"], vocab_size=259)
CONVERSATION = [{"role": "system", "content": "ab"}, {"role": "user", "content": "cd"},
                {"role": "assistant", "content": "e"}]


def test_role_tokens_are_what_each_message_adds_to_the_rendering():
    # <|im_start|> + "system\nab" + <|im_end|> + "\n": 1 + 9 + 1 + 1; "user\ncd": 1 + 7 + 1 + 1;
    # "assistant\ne": 1 + 11 + 1 + 1
    assert role_tokens(TOKENIZER, CONVERSATION) == {"system": 12, "observations": 10, "agent": 14}


def test_a_dpo_stage_counts_both_sides_every_epoch_and_once_for_the_reference(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pair = {"prompt": CONVERSATION[:2], "chosen": [CONVERSATION[2]],
            "rejected": [{"role": "assistant", "content": "fgh"}]}  # 1 + 13 + 1 + 1 = 16 agent tokens
    pairs.write_text(json.dumps(pair) + "\n")
    saved = {"args": {"pairs": str(pairs), "epochs": 2}, "summary": {"stage": "dpo", "pairs": 1}}
    work, what = stage_work(TOKENIZER, saved)
    assert work == {"system": 2 * 12 * 3, "observations": 2 * 10 * 3, "agent": (14 + 16) * 3}
    assert what == "1 pairs x 2 sides x (2 epochs + the reference)"


def test_an_sft_stage_counts_the_trained_share_of_its_kept_trajectories_each_epoch(tmp_path):
    data = tmp_path / "expert.jsonl"
    data.write_text("".join(json.dumps({"messages": CONVERSATION, "reward": r}) + "\n" for r in (1.0, 1.0, 0.0)))
    saved = {"args": {"data": [str(data)], "min_reward": 1.0},
             "summary": {"stage": "sft", "epochs": 3, "examples": 1, "dev_examples": 1}}
    work, _ = stage_work(TOKENIZER, saved)  # 2 trajectories kept, half of them trained, 3 epochs
    assert work == {"system": 12 * 3, "observations": 10 * 3, "agent": 14 * 3}
