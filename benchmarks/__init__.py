"""The maintained benchmarks of vqlatent (see README.md in this folder); `python benchmarks/run_all.py`.

A package so that the tests import the PyTorch references as `benchmarks.reference` from the
repository root, without path changes. The scripts also run as files (`python benchmarks/NAME.py`).
"""
