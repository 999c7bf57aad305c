"""Measuring models: `fer evaluate` (evaluate.py), metrics in the paper's Tables 1-2 layout
(metrics.py), calibration metrics and temperature scaling (calibration.py, calibrate.py), PNG
figures (plots.py), and the paper's Table 5 ladder, `fer ablate` (ablate.py).
"""
