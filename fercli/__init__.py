"""fercli: facial expression recognition with the OBSR-Net bilinear ResNet34."""

__version__ = "0.1.0"
