"""Datasets, proposals on disk, batching and the synthetic benchmark."""

from relground.data.catalog import DatasetEntry, dataset_entry, load_split
from relground.data.collate import GroundingItem, collate_grounding
from relground.data.dataset import GroundingDataset, build_dataloader, build_dataset
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import ProposalSet, ProposalStore, sliding_windows, write_proposals
from relground.data.referit import load_referit
from relground.data.transforms import transform_image

__all__ = [
    "DatasetEntry", "GroundingDataset", "GroundingItem", "ProposalSet", "ProposalStore",
    "build_dataloader", "build_dataset", "collate_grounding", "dataset_entry", "load_flickr30k", "load_referit",
    "load_split", "sliding_windows", "transform_image", "write_proposals",
]
