"""The paper's Table 5 ablation, `fer ablate`: the rungs and how a row is tabled (ladder.py),
planning and running the ladder (ablate.py), its wall-time estimate (ablate_estimate.py) and
its progress read from the run directories without training (ablate_status.py). It sits above
training and evaluation: each rung is a `fer train` run measured by `fer evaluate`.
"""
