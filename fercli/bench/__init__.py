"""`fer bench`: the training engine against a usual DataLoader pipeline in the same run
(engine_bench.py runs it; measure.py holds each measurement: both pipelines, the matmul rate,
FLOPs and inference) and data-parallel scaling of the real `fer train` (scaling.py).
"""
