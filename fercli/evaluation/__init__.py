"""Measuring models: `fer evaluate` (evaluate.py), metrics in the paper's Tables 1-2 layout
(metrics.py), calibration metrics and temperature scaling (calibration.py), and fitting a
model's temperature on its selection split and recording it (calibrate.py).
"""
