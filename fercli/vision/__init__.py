"""Pixels and faces: the one image decoder (images.py: bytes, files, PIL images and arrays
-> 8-bit grey, size checked from the header) and face detection with the one face crop
(faces.py: YuNet or Haar, square crop with a margin, 48x48). Imports only fercli.errors/files.
"""
