"""Data the lab generates and prepares: image sets, spoken-word clips, event feeds, TFRecords.

Every data set is written by the lab from a fixed seed into ``share_storages/data``; nothing is
downloaded. Decoders turn a damaged file into that row's error, never a failed job.
"""
