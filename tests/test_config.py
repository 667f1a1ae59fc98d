import glob
import importlib
import os

import pytest

from bigmodel_jax import inputs
from bigmodel_jax.config import validate
from bigmodel_jax.errors import ConfigError
from configs import default
from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '*.py')))


@pytest.mark.parametrize('path', [p for p in CONFIG_FILES if not p.endswith('__init__.py')],
                         ids=os.path.basename)
def test_every_config_file_is_valid(path):
  module = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
  config = module.get_config()
  validate(config)
  if config.get('job') != 'prune_pretrained':  # Keys and types as in configs/default.py.
    inputs.check_keys_and_types(config, default.get_config())
  assert module.__doc__ and 'launch.py' in module.__doc__  # Each config says how to run it.


def test_seed_recipe_is_exact():
  from configs import mnist_mlp
  c = mnist_mlp.get_config()
  assert (c.data.name, tuple(c.model.hidden_sizes)) == ('mnist', (512, 256))
  assert c.model.activation == 'relu'
  assert (c.loss, c.optimizer.name, c.optimizer.learning_rate) == ('cross_entropy', 'adam', 1e-3)
  assert (c.batch_size, c.num_epochs, c.data.shuffle) == (64, 10, True)
  assert (c.optimizer.schedule, c.data.normalize) == ('constant', False)
  assert (c.optimizer.weight_decay, c.model.dropout_rate) == (0, 0)


@pytest.mark.parametrize('key,value,message', [
    ('batch_size', 0, 'config.batch_size=0 is invalid: it must be a positive integer'),
    ('batch_size', -8, 'config.batch_size=-8'),
    ('optimizer.name', 'adamx', "config.optimizer.name='adamx' is not accepted; use one of: sgd"),
    ('model.activation', 'relu6', "config.model.activation='relu6' is not accepted"),
    ('data.name', 'cifar10', "config.data.name='cifar10' is not accepted; use one of: mnist, "),
    ('model.name', 'resnet', "config.model.name='resnet'"),
    ('loss', 'hinge', "config.loss='hinge'"),
    ('optimizer.schedule', 'linear', "config.optimizer.schedule='linear'"),
    ('optimizer.learning_rate', 0.0, 'config.optimizer.learning_rate=0.0 is invalid'),
    ('model.dropout_rate', 1.0, 'in \\[0, 1\\)'),
    ('model.hidden_sizes', (512, 0), 'tuple of positive integers'),
    ('num_epochs', 0, 'or set num_train_steps'),
    ('steps_per_call', 0, 'config.steps_per_call=0'),
    ('eval_every_steps', -1, 'config.eval_every_steps=-1 is invalid: it must be a non-negative '
     'integer'),
    ('data.validation_size', -1, 'config.data.validation_size=-1'),
    ('label_smoothing', 1.0, 'config.label_smoothing=1.0 is invalid: it must be in \\[0, 1\\)'),
])
def test_bad_values_name_the_key_and_what_is_accepted(key, value, message):
  config = default.get_config()
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_num_train_steps_replaces_epochs():
  config = default.get_config()
  config.num_epochs, config.num_train_steps = 0, 10
  validate(config)


def test_label_smoothing_needs_cross_entropy():
  config = default.get_config()
  config.loss, config.label_smoothing = 'mse', 0.1
  with pytest.raises(ConfigError, match="needs config.loss='cross_entropy'"):
    validate(config)
