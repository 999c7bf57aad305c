"""Exported model formats: the pickle-free fp16 .npz (npz_format.py) and ONNX with the
onnxruntime backend (onnx_format.py).
"""
