"""Test-time augmentation, by name (no torch: `fer predict` validates --tta before it loads a
model). The views themselves are fercli.model.inference._tta_views:

    none      the face
    flip      the face and its mirror image, probabilities averaged
    ten-crop  4 corners + centre at 90 % size, each also mirrored (the model resizes the crops
              back to its input size): torch only, the ONNX graphs take 48x48 faces alone
"""

TTA_MODES = ("none", "flip", "ten-crop")
ONNX_TTA_MODES = ("none", "flip")  # what the fixed 48x48 input of an ONNX graph can run
