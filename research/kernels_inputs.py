"""What SFT starts from, hashed, to compare two hosts before any training step: the expert data, the tiny
tokenizer's vocabulary and the seed's initial weights of the lecture model, each built as sft.py builds them.
Equal on two hosts: their runs part inside training (research/kernels.sh hashes the trained weights).

    python explore.py --env shop --split train --expert --out runs/default/expert.jsonl
    python research/kernels_inputs.py runs/default/expert.jsonl      # three lines: name, sha1
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import check_trajectory, read_jsonl, run_main, set_seed  # noqa: E402
from sft import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from common import RECIPES  # noqa: E402


def main():
    if len(sys.argv) != 2:
        raise ValueError("usage: python research/kernels_inputs.py EXPERT.jsonl")
    path, seed = sys.argv[1], 0
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (make it with explore.py --expert, as the docstring shows)")
    with open(path, "rb") as f:
        print(f"expert.jsonl  {hashlib.sha1(f.read()).hexdigest()}")
    set_seed(seed)  # as sft.py: the seed, then the tokenizer, then the model
    trajectories = [t for t in read_jsonl(path, check=check_trajectory) if t.get("reward", 1.0) >= 1.0]
    tokenizer = build_tiny_tokenizer([m["content"] for t in trajectories for m in t["messages"]]
                                     + ["system user assistant"], 2048)
    vocab = json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    print(f"vocabulary ({len(tokenizer.get_vocab())} tokens)  {hashlib.sha1(vocab).hexdigest()}")
    model = build_tiny_model(tokenizer, 192, RECIPES["lecture"]["tiny_layers"])
    weights = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().contiguous().numpy().tobytes())
    print(f"initial weights (seed {seed})  {weights.hexdigest()}")


if __name__ == "__main__":
    run_main(main)
