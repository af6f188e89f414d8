"""Sweeps: many runs of one base request over a search space, with successive halving.

`plan` expands a search space into trials (at submit, so every trial is validated before
anything runs), `asha` decides which trials stop at each rung, and `driver` moves each
sweep along from every worker's reaper pass.
"""
