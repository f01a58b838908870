import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests, skipped unless --runslow")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def run_in_process(script, *args, monkeypatch, capsys):
    """`python SCRIPT ARGS` as the shell runs it, in this process (no ~5 s of imports per case): the
    script's main() under run_main; returns (exit code, stderr)."""
    import importlib
    from common import run_main
    module = importlib.import_module(script.removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", [script, *args])
    capsys.readouterr()
    code = 0
    try:
        run_main(module.main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err
