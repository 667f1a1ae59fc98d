"""A TFDS builder that turns the four IDX files of MNIST or Fashion-MNIST into a TFDS dataset.

Why our own builder rather than TFDS's `mnist` / `fashion_mnist`: those store PNG-encoded images,
which need TensorFlow to prepare and decode, and their manual path rejects copies whose gzip
bytes differ from the registered ones (Debian's Fashion-MNIST package, for one). This builder
stores raw uint8 tensors in array_record files, prepares without TensorFlow, reads the files from
a local folder (`manual_dir`) or downloads them through TFDS's download manager with the same
checksums TFDS registers (checksums.tsv beside this file).
"""

import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax.data import idx, text

_URLS = {
    'mnist': 'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'fashion_mnist': 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
}
IMAGE_SHAPE = idx.IMAGE_SHAPE
NUM_CLASSES = idx.NUM_CLASSES


def url(name: str, split: str, kind: str) -> str:
  """Where TFDS downloads `split`'s 'images' or 'labels' file of dataset `name`."""
  prefix = idx.SPLIT_PREFIXES[split]
  return f'{_URLS[name]}{prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte.gz'


class IdxImages(tfds.core.GeneratorBasedBuilder):
  """MNIST-format image classification (28x28 uint8 images, 10 classes) from IDX files."""

  VERSION = tfds.core.Version(idx.BUILDER_VERSION)
  RELEASE_NOTES = {'1.0.0': 'Raw uint8 tensors in array_record, no TensorFlow needed.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in _URLS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and '
      't10k-labels-idx1-ubyte.gz (gzipped or not) in the manual folder.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.builder_config.name} from its IDX files, images as uint8 tensors.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = text.manual_dir(dl_manager)
    if manual is not None:
      paths = {split: idx.split_paths(str(manual), split)
               for split in idx.SPLIT_PREFIXES}
    else:
      name = self.builder_config.name
      got = dl_manager.download({f'{prefix}-{kind}': url(name, split, kind)
                                 for split, prefix in idx.SPLIT_PREFIXES.items()
                                 for kind in ('images', 'labels')})
      paths = {split: (str(got[f'{prefix}-images']), str(got[f'{prefix}-labels']))
               for split, prefix in idx.SPLIT_PREFIXES.items()}
    return {split: self._generate_examples(*pair) for split, pair in paths.items()}

  def _generate_examples(self, images_path: str, labels_path: str):
    images, labels = idx.read_pair(images_path, labels_path)
    if images.shape[1:] != IMAGE_SHAPE:
      raise idx.DataError(f'{images_path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}.')
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield i, {'image': image, 'label': int(label)}
