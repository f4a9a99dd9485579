"""Datasets, proposals on disk, batching and the synthetic benchmark."""
