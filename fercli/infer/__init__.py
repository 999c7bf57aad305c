"""Inference: the one path from an image to labelled faces. recognizer.py is the Recognizer the
Python API, `fer predict` and `fer serve` share; classifier.py picks the model and the backend
that runs it; predict.py and video.py are `fer predict` on photos and on videos / a camera;
config.py holds PredictConfig.
"""
