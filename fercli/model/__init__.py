"""The networks and their files: ResNet34 and OBSR-Net's bilinear ResNet34, paper eqs. (1)-(7)
(networks.py), checkpoint files (checkpoints.py), which file a model reference names
(locate.py, without torch), the forward pass with test-time augmentation (inference.py) and a
fitted temperature applied to the logits (temperature.py).
"""
