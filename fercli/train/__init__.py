"""Training: the frozen TrainConfig and presets (config.py), the GC optimizers of eqs. (8)-(12)
(optim.py), recipe regularisers (regularize.py), the hot loops (engine.py), a run's state and
its epoch loop (loop.py), checkpoint payloads, the background writer and the space check
(checkpointing.py), run directories and resume (runs.py), concurrent runs (jobs.py) and data
parallel (launch.py, distributed.py).
"""
