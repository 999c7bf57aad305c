"""The networks and their files: ResNet34 and OBSR-Net's bilinear ResNet34, paper eqs. (1)-(7)
(networks.py), checkpoint files (checkpoints.py), and a model reference -> one loaded model
with its provenance (sources.py).
"""
