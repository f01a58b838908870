"""The shape of the project, read from its source: the top level is the paper's five stages and the module
they share; no stage imports another; envs/ and plumbing/ import nothing above them; studies use no
stage's private helpers; the paper's beta is written once."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"sft", "explore", "pairs", "dpo", "loop"}
SHARED = "common"


def python_files(folder):
    for base, _, names in os.walk(os.path.join(ROOT, folder)):
        yield from (os.path.join(base, name) for name in names if name.endswith(".py"))


def imports(path):
    """(module, names) for every import in a file, at any depth (a function's local imports too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]


def test_the_top_level_is_the_five_stages_and_one_shared_module():
    top = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert top == STAGES | {SHARED}


def test_no_stage_imports_another_stage():
    for stage in STAGES:
        imported = {module.split(".")[0] for module, _ in imports(os.path.join(ROOT, f"{stage}.py"))}
        assert not imported & (STAGES - {stage}), stage


def test_envs_and_plumbing_import_nothing_above_them():
    above = STAGES | {SHARED, "research", "exercises", "tests"}
    for folder in ("envs", "plumbing"):
        for path in python_files(folder):
            imported = {module.split(".")[0] for module, _ in imports(path)}
            assert not imported & above, (os.path.relpath(path, ROOT), imported & above)


def test_studies_use_no_private_helper_of_a_stage():
    for path in python_files("research"):
        for module, names in imports(path):
            if module in STAGES | {SHARED}:
                private = [name for name in names if name.startswith("_")]
                assert not private, (os.path.relpath(path, ROOT), module, private)


def test_the_papers_beta_is_written_once():
    """0.1 as beta's value, anywhere in the code outside the tests: a dict entry, an assignment, a default."""
    found = []
    for folder in (".", "plumbing", "envs", "research", "exercises"):
        paths = python_files(folder) if folder != "." else (os.path.join(ROOT, f"{m}.py") for m in STAGES | {SHARED})
        for path in paths:
            if os.sep + "tests" + os.sep in path or os.path.basename(path).startswith("test_"):
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                pairs = []
                if isinstance(node, ast.Dict):
                    pairs = [(k.value if isinstance(k, ast.Constant) else None, v) for k, v in zip(node.keys, node.values)]
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    pairs = [(node.target.id, node.value)]
                elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                    pairs = [(str(node.args[0].value).lstrip("-"), k.value) for k in node.keywords if k.arg == "default"]
                for key, value in pairs:
                    if key == "beta" and isinstance(value, ast.Constant) and value.value == 0.1:
                        found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert len(found) == 1 and found[0].startswith("common.py:"), found
