"""loop.py's flags, and the settings they default to: the tiny model's recipes, the paper's settings for a
loaded chat model, and the --variants trained beside ETO. research/experiments.py takes the same flags.
Errors are ValueError, which the scripts print as one line (common.run_main)."""
from plumbing.launch import add_launch_flags, set_launch

SPLITS = ("dev", "test_seen", "test_unseen")  # what --eval-splits may name: choose settings on dev, report the tests
PAIR_LEVELS = ("trajectory", "divergence", "step", "mixture")

# The tiny model's recipes: the paper's algorithm (its pair rule, Eq. 11 alone, beta 0.1), with the settings a
# 1M-parameter model trained from scratch needs chosen on the shop's dev split (docs/results.md): SFT's epochs,
# batch and lr, DPO's lr, epochs and batch. "lecture", the default (~5 minutes on 2 cores), and "full" (4 layers,
# 10 SFT epochs, every train task). A loaded chat model takes the paper's DPO settings and sft.py's SFT defaults.
# The lecture recipe's SFT (6 epochs, lr 5e-3 after a warm-up over a tenth of the steps) was chosen on dev for a model
# that lands in nearly the same place under other correct arithmetic (docs/performance.md: research/arithmetic.py).
RECIPES = {
    "lecture": {"tiny_layers": 2, "sft_epochs": 6, "sft_batch_size": 4, "sft_lr": 5e-3, "sft_warmup_ratio": 0.1,
                "explore_limit": 500,
                "pair_level": "trajectory", "dpo_lr": 3e-5, "beta": 0.1, "dpo_epochs": 1, "dpo_batch_size": 8,
                "sft_weight": 0.0, "rollout_batch_size": 200, "jobs": 2},
    "full": {"tiny_layers": 4, "sft_epochs": 10, "sft_batch_size": 16, "sft_lr": 3e-3, "sft_warmup_ratio": None,
             "explore_limit": 0,
             "pair_level": "trajectory", "dpo_lr": 3e-5, "beta": 0.1, "dpo_epochs": 2, "dpo_batch_size": 32,
             "sft_weight": 0.0, "rollout_batch_size": 200, "jobs": 1},
}
PAPER_DEFAULTS = {"explore_limit": 0, "pair_level": "trajectory", "dpo_lr": 1e-6, "beta": 0.1, "dpo_epochs": 3,
                  "dpo_batch_size": 32, "sft_weight": 0.0, "jobs": 1}
# --variants: departures from the paper, each trained beside ETO from the same policy, rows "eto-NAME-i".
# divergence-nll: pairs cut to the first turn whose action differs, plus NLL on the chosen side, lr 1e-4, beta 1.
VARIANTS = {"divergence-nll": {"pair_level": "divergence", "sft_weight": 1.0, "lr": 1e-4, "beta": 1.0}}


def add_loop_flags(parser):
    """The loop's flags, shared with the research scripts built on it."""
    parser.add_argument("--run", default="runs/default", help="folder for every artifact of this run")
    parser.add_argument("--env", default="shop", help="an env of envs/ (explore.py --help lists them), NAME:OPTIONS, "
                                                       "or a module of yours with make(options)")
    parser.add_argument("--model", default="tiny", help="'tiny' (built offline) or a HF chat-model folder or .gguf file")
    parser.add_argument("--recipe", default="lecture", choices=tuple(RECIPES),
                        help="the tiny model's settings below, where a flag leaves them unset: lecture (~5 min on 2 "
                             "cores) or full (a 4-layer model on every train task, 3x as long)")
    parser.add_argument("--iterations", type=int, default=1, help="explore -> pairs -> DPO rounds (the paper: 2; one, "
                        "from dev and time: a second helped the control more than ETO, and adds ~2 minutes)")
    parser.add_argument("--seed", type=int, default=0, help="passed to every stage")
    parser.add_argument("--no-control", action="store_true", help="skip the sft-continued control")
    parser.add_argument("--train-limit", type=int, default=None, help="train tasks used (None: all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="tasks per evaluation split (None: all)")
    parser.add_argument("--eval-splits", default="test_seen,test_unseen", type=lambda text: text.split(","),
                        help="comma list of the splits every model is evaluated on: dev to choose settings, "
                             "test_seen and test_unseen to report them")
    parser.add_argument("--max-steps", type=int, default=None, help="actions per episode (None: the env's)")
    parser.add_argument("--autocast", default="none", choices=("none", "bf16"),
                        help="training matmuls in bf16 (sft.py/dpo.py --autocast); see docs/performance.md")
    parser.add_argument("--variants", default="", type=lambda text: [name for name in text.split(",") if name],
                        help="comma list of departures from the paper to train and evaluate beside ETO, each from "
                             "the same policy: " + ", ".join(VARIANTS) + " (see VARIANTS in plumbing/loop_flags.py)")
    add_launch_flags(parser)  # --procs, --jobs, --redo-changed, --native-kernels, --dry-run, --debug
    sft = parser.add_argument_group("SFT (None: the recipe's for tiny; sft.py's default for a loaded model)")
    sft.add_argument("--tiny-layers", type=int, default=None, help="sft.py --tiny-layers, the tiny model's decoder "
                                                                   "layers: lecture 2, full 4; a loaded model has its own")
    sft.add_argument("--sft-epochs", type=int, default=None, help="sft.py --epochs; tiny: lecture 6, full 10")
    sft.add_argument("--sft-lr", type=float, default=None, help="sft.py --lr; tiny: lecture 5e-3, full 3e-3")
    sft.add_argument("--sft-batch-size", type=int, default=None, help="sft.py --batch-size; tiny: lecture 4, full 16")
    sft.add_argument("--sft-warmup-ratio", type=float, default=None, help="sft.py --warmup-ratio; tiny: lecture 0.1 "
                     "(chosen on dev with the lr, for a model that holds under other arithmetic); full: sft.py's")
    explore = parser.add_argument_group("exploration and pairs (the authors' script explores greedily, once per task)")
    explore.add_argument("--temperature", type=float, default=0.0, help="explore.py --temperature (0: greedy)")
    explore.add_argument("--samples", type=int, default=1, help="explored trajectories per train task")
    explore.add_argument("--explore-limit", type=int, default=None,
                         help="train tasks explored per iteration (0: all); None: lecture 500, full all")
    explore.add_argument("--rollout-batch-size", type=int, default=None,
                         help="explore.py --batch-size for exploring and evaluating; tiny: 200 (greedy episodes come "
                              "out the same at any batch size, a big batch sooner); None: explore.py's default")
    explore.add_argument("--pair-level", default=None, choices=PAIR_LEVELS,
                         help="None: trajectory, the paper's rule (the explored side cut to the expert's turns + 5); "
                              "divergence: the first turn whose action differs; step: the agent acts after t-1 "
                              "teacher-forced expert turns (paper App. B); mixture: trajectory and step")
    dpo = parser.add_argument_group(
        "DPO, Eq. 11 (None: for tiny, the recipe's, chosen on dev; for a loaded model, the paper's)")
    dpo.add_argument("--dpo-lr", type=float, default=None, help="tiny: 3e-5 (chosen on dev: 1e-5 moves nothing, 1e-4 "
                                                                "breaks the format); loaded: 1e-6, the paper's")
    dpo.add_argument("--beta", type=float, default=None, help="0.1, the paper's, for either")
    dpo.add_argument("--dpo-epochs", type=int, default=None, help="tiny: lecture 1, full 2 (chosen on dev, for "
                                                                  "time); loaded: 3, the paper's")
    dpo.add_argument("--sft-weight", type=float, default=None, help="NLL on chosen added to ETO's loss (beyond the "
                                                                    "paper); None: 0, the paper's")
    dpo.add_argument("--dpo-batch-size", type=int, default=None, help="dpo.py --batch-size; tiny: lecture 8 (38 steps "
                     "on its ~300 pairs), full 32; loaded: 32, the paper's")
    dpo.add_argument("--later-dpo-lr", type=float, default=None,
                     help="lr from iteration 2 on (None: --dpo-lr; the authors' script: 5e-7)")
    dpo.add_argument("--later-beta", type=float, default=None,
                     help="beta from iteration 2 on (None: --beta; the authors' script: 0.5)")


def fill_model_defaults(args):
    """Flags left unset take the values that fit the model, and are recorded as set (RUN/loop_args.json);
    --procs is checked and set for every stage launched."""
    if args.procs > 1 and args.jobs is None:
        args.jobs = 1  # each stage already has the machine
    defaults = RECIPES[args.recipe] if args.model == "tiny" else PAPER_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [split for split in args.eval_splits if split not in SPLITS]
    if unknown or not args.eval_splits:
        raise ValueError(f"--eval-splits: unknown split {unknown[0] if unknown else ''!r}; valid: {', '.join(SPLITS)}")
    for flag in ("train_limit", "eval_limit", "explore_limit"):  # 0: all tasks
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 0, got {getattr(args, flag)}")
    set_launch(args)  # checks --procs and --jobs
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    if args.rollout_batch_size is not None and args.rollout_batch_size < 1:
        raise ValueError(f"--rollout-batch-size must be at least 1, got {args.rollout_batch_size}")
