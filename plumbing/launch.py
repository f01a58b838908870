"""How loop.py launches a stage: the command printed as a user would type it, run as a subprocess (under
torchrun with --procs), skipped when its outputs exist. What a reader of the ETO loop can skip."""
import json
import os
import shlex
import subprocess
import sys

MODEL_STAGES = ("sft.py", "dpo.py")  # these write a save_pretrained folder; the others a JSONL file
TORCH_STAGES = ("explore.py", "sft.py", "dpo.py")  # with --procs N, these run under torchrun
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the stages sit one folder up, wherever the loop runs from


class Launch:
    """How stages are launched, set once from the flags."""
    procs = 1        # --procs: the torch stages run under torchrun with this many processes
    dry_run = False  # --dry-run: print every command, run none


def run_stage(script, out, *flags):
    """Run `python SCRIPT FLAGS --out OUT` unless it is done; return its summary. A stage is done when
    its summary file exists: every stage writes it last (a model folder's args.json arrives with the
    folder, by rename), so a killed stage leaves nothing that looks done."""
    summary_file = os.path.join(out, "args.json") if script in MODEL_STAGES else out + ".args.json"
    if Launch.dry_run:
        print(f"$ {launch_words(script, *flags, '--out', out)[1]}", flush=True)
        return None
    if os.path.exists(summary_file):
        print(f"[done] {launch_words(script, *flags, '--out', out)[1]}", flush=True)
    else:
        run_command(script, *flags, "--out", out)
    with open(summary_file) as f:
        return json.load(f)["summary"]


def run_command(script, *flags):
    """Print `python SCRIPT FLAGS` and run it (a torch stage under torchrun with --procs); a failure stops
    the loop with the stage's exit status."""
    launcher, shown = launch_words(script, *flags)
    print(f"$ {shown}", flush=True)
    finished = subprocess.run([*launcher, os.path.join(HERE, script), *flags])
    if finished.returncode != 0:
        print(f"error: stage failed with exit status {finished.returncode}: {shown}", file=sys.stderr)
        sys.exit(finished.returncode)


def launch_words(script, *flags):
    """(the launcher's argv before the script, the command as a user would type it from the repo root)."""
    launcher, shown = [sys.executable], shell_words("python", script, *flags)
    if Launch.procs > 1 and script in TORCH_STAGES:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={Launch.procs}"]
        shown = shell_words("torchrun", "--standalone", f"--nproc-per-node={Launch.procs}", script, *flags)
    return launcher, shown


def shell_words(*words):
    return " ".join(shlex.quote(word) for word in words)
