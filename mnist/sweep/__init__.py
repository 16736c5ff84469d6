"""Sweeps: variants x seeds of scripts/train.py in parallel processes, resumable, with
paired confidence intervals against a baseline (`scripts/sweep.py`).

TensorFlow-free: the sweep starts training processes and reads their results.json.
"""
