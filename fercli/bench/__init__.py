"""`fer bench`: the training engine against a usual DataLoader pipeline in the same run
(engine_bench.py) and data-parallel scaling of the real `fer train` (scaling.py).
"""
