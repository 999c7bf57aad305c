"""Datasets: the prepared format that `fer prepare` writes and everything else reads
(prepared.py), the device-resident splits and batched augmentation the engine trains on
(resident.py), and the readers of the raw downloads (ingest/, the core of `fer prepare`).
"""
