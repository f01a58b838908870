"""How loop.py launches a stage: the command printed as a user would type it, run as a subprocess (under
torchrun with --procs) on the pinned CPU kernels, skipped when its outputs exist and were made by the
same command; independent stages side by side with --jobs. What a reader of the ETO loop can skip."""
import json
import os
import shlex
import subprocess
import sys

# The CPU kernels every stage the loop starts is held to (plumbing/launch.py): the AVX2 code paths that every
# x86-64 CPU of the last decade has. An AVX-512 host then computes what an AVX2-only host computes, bit for
# bit, so one seed trains one model on both; without them the same seed's SFT differs by more than the
# spread over seeds. They must be set before torch loads, so a stage can only record them.
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# ...and the threads a stage alone runs on (two side by side take one each): a matrix product split over
# more threads may sum in another order, so a laptop with 8 cores computes what a 2-core host computes.
CPU_THREADS = 2


def available_cores():
    """The cores this process may use: its affinity set on Linux, the CPU count on macOS and Windows
    (the affinity call exists only on Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return (getattr(os, "process_cpu_count", None) or os.cpu_count)() or 1


DPO_STUDIES = ("research/preference_losses.py", "research/replay.py")  # dpo.py's loop with a study's loss or term
MODEL_STAGES = ("sft.py", "dpo.py", *DPO_STUDIES)  # these write a save_pretrained folder; the others a JSONL file
TORCH_STAGES = ("explore.py", "sft.py", "dpo.py", "research/preference_losses.py")  # with --procs N: under torchrun
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the stages sit one folder up, wherever the loop runs from


class Launch:
    """How stages are launched, set once from the flags."""
    procs = 1        # --procs: the torch stages run under torchrun with this many processes
    dry_run = False  # --dry-run: print every command, run none
    jobs = 1         # --jobs: independent stages run this many at a time, the cores shared out
    native_kernels = False  # --native-kernels: the CPU's own kernels on all its cores (other numbers), not CPU_KERNELS
    redo_changed = False    # --redo-changed: a stage made by another command is redone, and every stage after it
    redoing = False         # set once a stage was redone that way


def add_launch_flags(parser):
    """loop.py's flags for how its stages are launched, not what they compute."""
    parser.add_argument("--procs", type=int, default=1, help="processes per explore/SFT/DPO stage (torchrun: a GPU "
                                                              "each where CUDA is; on CPU they share the cores)")
    parser.add_argument("--jobs", type=int, default=None, help="independent stages (the splits' evaluations, DPO and "
                        "its control) run this many at a time, the cores shared out; None: the lecture recipe's 2, "
                        "1 for the full recipe, a loaded model or --procs above 1")
    parser.add_argument("--redo-changed", action="store_true", help="a finished stage whose recorded command differs "
                        "from the one wanted is redone, with every stage after it (otherwise the loop stops there)")
    parser.add_argument("--native-kernels", action="store_true", help="run the stages on the CPU's own kernels and "
                        "all its cores: another table than the pinned one (plumbing.launch.CPU_KERNELS and CPU_THREADS, "
                        "which make every AMD x86-64 CPU print one table)")
    parser.add_argument("--dry-run", action="store_true", help="print every stage's command, run none")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def set_launch(args):
    """Check the launch flags and set them for every stage launched."""
    if args.procs < 1:
        raise ValueError(f"--procs must be at least 1, got {args.procs}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    Launch.procs, Launch.jobs, Launch.dry_run = args.procs, args.jobs, getattr(args, "dry_run", False)
    Launch.native_kernels, Launch.redo_changed = args.native_kernels, args.redo_changed


def kernel_settings():
    """The `export` line that pins the CPU kernels (None with --native-kernels), and the variables it sets."""
    if Launch.native_kernels:
        return None, {}
    pinned = {**CPU_KERNELS, "OMP_NUM_THREADS": str(CPU_THREADS)}
    return "export " + " ".join(f"{name}={value}" for name, value in pinned.items()), pinned


def threads_of(group_size):
    """OMP_NUM_THREADS for each of `group_size` stages run side by side (None: the stage's default): pinned,
    CPU_THREADS shared out; with --native-kernels, the available cores shared out."""
    if not Launch.native_kernels:
        return str(max(1, CPU_THREADS // group_size))
    return str(max(1, available_cores() // group_size)) if group_size > 1 else None


def flag_values(words):
    """{'--flag': 'value(s)'} of a command's words; a switch maps to ''."""
    values, flag = {}, None
    for word in words:
        if word.startswith("--"):
            flag = word
            values[flag] = ""
        elif flag is not None:
            values[flag] = (values[flag] + " " + word).strip()
    return values


def moved(recorded, wanted):
    """The recorded command's words with its run folder renamed to the wanted one's (from the two --out
    paths): a run folder copied or moved elsewhere still matches the commands that made it."""
    old_out, new_out = flag_values(recorded).get("--out"), flag_values(wanted).get("--out")
    if not old_out or not new_out or old_out == new_out:
        return recorded
    old_parts, new_parts = old_out.split("/"), new_out.split("/")
    while old_parts and new_parts and old_parts[-1] == new_parts[-1]:  # the part inside the run folder
        old_parts, new_parts = old_parts[:-1], new_parts[:-1]
    old_root, new_root = "/".join(old_parts), "/".join(new_parts)
    if not old_root or not new_root:
        return recorded
    return [new_root + word[len(old_root):] if word == old_root or word.startswith(old_root + "/") else word
            for word in recorded]


def changed_settings(recorded, wanted):
    """How the recorded run of a stage differs from the one wanted now, in one phrase ('' when it does not).
    Each is {'command': [...], 'cpu_kernels': {...}}."""
    if recorded.get("command") is None:
        return "it records no command (made by an older version, or by hand without one)"
    before, now = flag_values(moved(recorded["command"], wanted["command"])), flag_values(wanted["command"])
    before.update({f"{name}=": value or "(unset)" for name, value in (recorded.get("cpu_kernels") or {}).items()})
    now.update({f"{name}=": value or "(unset)" for name, value in wanted["cpu_kernels"].items()})
    for flag in list(before) + [flag for flag in now if flag not in before]:
        if before.get(flag) != now.get(flag):
            was = "absent" if flag not in before else repr(before[flag]) if before[flag] else "set"
            is_ = "absent" if flag not in now else repr(now[flag]) if now[flag] else "set"
            return f"{flag.rstrip('=')} was {was} there, is {is_} now"
    return ""


def run_stage(script, out, *flags):
    """Run `python SCRIPT FLAGS --out OUT` unless it is done; return its summary. A stage is done when
    its summary file exists: every stage writes it last (a model folder's args.json arrives with the
    folder, by rename), so a killed stage leaves nothing that looks done."""
    return run_stages([(script, out, flags)])[0]


def run_stages(stages):
    """Run independent stages, each (script, out, flags), --jobs at a time; their summaries in order.
    Stages run together share the cores out (OMP_NUM_THREADS), printed as the shell lines
    `OMP_NUM_THREADS=N python ... &` then `wait`; the first shows its progress, the others write it to OUT.log."""
    todo = []
    for script, out, flags in stages:
        if os.path.exists(summary_file(script, out)) and not Launch.dry_run and not Launch.redoing:
            stage_env = {**os.environ, **kernel_settings()[1]}  # what the stage would run under
            change = changed_settings(read_record(script, out), {
                "command": [*flags, "--out", out], "cpu_kernels": {name: stage_env.get(name) for name in CPU_KERNELS}})
            if not change:
                print(f"[done] {launch_words(script, *flags, '--out', out)[1]}", flush=True)
                continue
            if not Launch.redo_changed:  # never report old outputs under new settings
                raise ValueError(f"{out} was made by another command ({script}: {change}); use a new --run, or "
                                 f"--redo-changed to redo that stage and every stage after it")
            print(f"[changed: {change}] redoing it and every stage after it", flush=True)
            Launch.redoing = True
        todo.append((script, [*flags, "--out", out], out))
    for start in range(0, len(todo), Launch.jobs):
        group = todo[start:start + Launch.jobs]
        threads = threads_of(len(group))
        started = [start_command(script, flags, threads, log=out + ".log" if i else None,
                                 side_by_side=len(group) > 1)
                   for i, (script, flags, out) in enumerate(group)]
        if len(group) > 1:
            print("$ wait", flush=True)
        for process, shown, log in started:
            if process is not None and process.wait() != 0:
                if log:  # its error line is at the end of its log
                    with open(log) as f:
                        sys.stderr.write("".join(f.readlines()[-3:]))
                print(f"error: stage failed with exit status {process.returncode}: {shown}", file=sys.stderr)
                for other, _, _ in started:
                    if other is not None:
                        other.kill()
                sys.exit(process.returncode)
    if Launch.dry_run:
        return [None] * len(stages)
    return [read_record(script, out)["summary"] for script, out, _ in stages]


def summary_file(script, out):
    return os.path.join(out, "args.json") if script in MODEL_STAGES else out + ".args.json"


def read_record(script, out):
    """What a finished stage wrote beside its output (common.stage_record): args, command, summary, ..."""
    with open(summary_file(script, out)) as f:
        return json.load(f)


def start_command(script, flags, threads=None, log=None, side_by_side=False):
    """Print a stage's command and start it; with `threads`, on that many threads; `side_by_side`: one of
    stages run together, printed with its threads and a trailing `&`.
    Returns (the process, None under --dry-run; the command as printed; `log`, where its stderr goes)."""
    launcher, shown = launch_words(script, *flags)
    if side_by_side:
        shown = f"OMP_NUM_THREADS={threads} {shown}"
    print(f"$ {shown}{' &' if side_by_side else ''}", flush=True)
    if Launch.dry_run:
        return None, shown, log
    env = {**os.environ, **kernel_settings()[1]}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    if log:
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    stderr = open(log, "w") if log else None
    process = subprocess.Popen([*launcher, os.path.join(HERE, script), *flags], env=env, stderr=stderr)
    if stderr:
        stderr.close()  # the child holds its own copy
    return process, shown, log


def run_command(script, *flags):
    """Print `python SCRIPT FLAGS` and run it (a torch stage under torchrun with --procs); a failure stops
    the loop with the stage's exit status."""
    process, shown, _ = start_command(script, flags)
    if process is not None and process.wait() != 0:
        print(f"error: stage failed with exit status {process.returncode}: {shown}", file=sys.stderr)
        sys.exit(process.returncode)


def launch_words(script, *flags):
    """(the launcher's argv before the script, the command as a user would type it from the repo root)."""
    launcher, shown = [sys.executable], shell_words("python", script, *flags)
    if Launch.procs > 1 and script in TORCH_STAGES:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={Launch.procs}"]
        shown = shell_words("torchrun", "--standalone", f"--nproc-per-node={Launch.procs}", script, *flags)
    return launcher, shown


def shell_words(*words):
    return " ".join(shlex.quote(word) for word in words)
