"""Data: datasets decoded to cached uint8 tensors, and the one-shot exemplar split."""
from .datasets import NORMALIZATION, DatasetError, ImageDataset, load_dataset
from .exemplars import load_exemplars, save_exemplars, select_exemplars

__all__ = ["DatasetError", "ImageDataset", "load_dataset", "NORMALIZATION",
           "select_exemplars", "save_exemplars", "load_exemplars"]
