"""The side-by-side performance benchmark of issue 16 (run by hand; not collected as tests).

Run from the repository root: `.venv/bin/python -m tests.perf --help`.
"""
