"""Datasets: TFDS builders and the host-side input pipeline."""

from bigmodel_jax.data.pipeline import (
    DATASETS,
    IMAGE_DATASETS,
    IMAGE_SHAPE,
    SOURCES,
    TEXT_DATASETS,
    Datasets,
    Split,
    epoch_permutation,
    eval_batches,
    load_datasets,
    preprocess,
    read_split,
    train_chunks,
)

__all__ = ['DATASETS', 'IMAGE_DATASETS', 'IMAGE_SHAPE', 'SOURCES', 'TEXT_DATASETS', 'Datasets',
           'Split', 'epoch_permutation', 'eval_batches', 'load_datasets', 'preprocess',
           'read_split', 'train_chunks']
