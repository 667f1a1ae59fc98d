"""README.md and docs/ stay true: the snippet runs, commands and links point at real things.

Checks, for README.md and every docs/**/*.md:
- the README's ```python blocks run as one script;
- every `python launch.py --config=X ...` command in a code block names a config that exists,
  and each `--config.a.b=value` override a key of that config;
- every `--config.a.b=` written anywhere in the text (tables, prose) is a key of the default
  config, every `configs/NAME.py`, `bench/NAME.py` and `scripts/NAME.sh` exists, and every
  `--flag` passed to a bench script in a code block is defined by that script;
- relative links and images point at files (and headings) that exist.
"""

import functools
import importlib.util
import pathlib
import re
import shlex
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]

_FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
_OVERRIDE = re.compile(r'--config\.([A-Za-z_][\w.]*)=')
_FILE_MENTION = re.compile(r'(?<![\w/.])((?:configs|bench)/\w+\.py|scripts/\w+\.sh)\b')


def _ids(paths):
  return [str(p.relative_to(ROOT)) for p in paths]


def code_blocks(text: str) -> list[tuple[str, str]]:
  """(language, body) of every fenced block."""
  return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def shell_commands(text: str) -> list[list[str]]:
  """The tokens of each command line in the non-Python code blocks (continuations joined)."""
  commands = []
  for language, body in code_blocks(text):
    if language not in ('', 'bash', 'sh', 'shell', 'console'):
      continue
    for line in body.replace('\\\n', ' ').splitlines():
      line = line.strip()
      if line.startswith('$ '):
        line = line[2:]
      if not line or line.startswith('#'):
        continue
      try:
        tokens = shlex.split(line, comments=True)
      except ValueError:  # Not a command (e.g. a line of program output with a stray quote).
        continue
      if any(t.endswith(('launch.py', '.py', '.sh')) for t in tokens):
        commands.append(tokens)
  return commands


@functools.cache
def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, given relative to the repository root."""
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # Config files import `configs.default`.
  spec = importlib.util.spec_from_file_location(f'_docs_config_{len(path)}', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def script_flags(script: pathlib.Path) -> set[str]:
  """Flags a bench script defines, by absl (`DEFINE_x('name'`) or argparse (`'--name'`)."""
  source = script.read_text()
  absl = re.findall(r"DEFINE_\w+\(\s*['\"](\w+)['\"]", source)
  argparse = re.findall(r"['\"]--([\w-]+)['\"]", source)
  return set(absl) | set(argparse)


def command_errors(tokens: list[str]) -> list[str]:
  """What is wrong with one command line: missing configs, keys, scripts or flags."""
  errors = []
  for i, token in enumerate(tokens):
    if token.endswith('launch.py'):
      args = tokens[i + 1:]
      configs = [a.split('=', 1)[1] for a in args if a.startswith('--config=')]
      if len(configs) != 1:
        errors.append(f'{" ".join(tokens)}: needs exactly one --config=FILE')
        continue
      if not (ROOT / configs[0]).is_file():
        errors.append(f'{configs[0]} does not exist')
        continue
      config = load_config(configs[0])
      for arg in args:
        match = _OVERRIDE.match(arg)
        if match and not has_key(config, match.group(1)):
          errors.append(f'{configs[0]} has no key {match.group(1)!r}')
        elif arg.startswith('--') and not match and not arg.startswith(('--config=',
                                                                         '--workdir=')):
          errors.append(f'launch.py has no flag {arg}')
    elif re.fullmatch(r'(\S*/)?(bench/\w+\.py)', token):
      script = ROOT / re.search(r'bench/\w+\.py', token).group(0)
      if not script.is_file():
        errors.append(f'{script.relative_to(ROOT)} does not exist')
        continue
      defined = script_flags(script)
      for arg in tokens[i + 1:]:
        if arg.startswith('--') and arg[2:].split('=', 1)[0] not in defined:
          errors.append(f'{script.relative_to(ROOT)} defines no flag {arg}')
    elif re.fullmatch(r'(\S*/)?scripts/\w+\.sh', token):
      if not (ROOT / re.search(r'scripts/\w+\.sh', token).group(0)).is_file():
        errors.append(f'{token} does not exist')
  return errors


def text_errors(text: str) -> list[str]:
  """Overrides and file names mentioned anywhere in the text (tables and prose too): a key must
  be in configs/default.py or in a shipped config of its own schema (configs/smollm2_prune.py)."""
  known = [load_config('configs/default.py'), load_config('configs/smollm2_prune.py')]
  errors = [f'no config key {key!r}' for key in _OVERRIDE.findall(text)
            if not any(has_key(config, key.rstrip('.')) for config in known)]
  errors += [f'{name} does not exist' for name in _FILE_MENTION.findall(text)
             if not (ROOT / name).is_file()]
  return errors


def anchors(doc: pathlib.Path) -> set[str]:
  """GitHub's anchors of a Markdown file's headings (code blocks left out)."""
  text = _FENCE.sub('', doc.read_text())
  headings = re.findall(r'^#+ (.*)$', text, re.MULTILINE)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def link_errors(doc: pathlib.Path) -> list[str]:
  errors = []
  for target in _LINK.findall(doc.read_text()):
    if target.startswith(('http://', 'https://', 'mailto:')):
      continue
    name, _, anchor = target.partition('#')
    path = (doc.parent / name).resolve() if name else doc
    if not path.exists():
      errors.append(f'{target} (from {doc.name}) does not exist')
    elif anchor and path.suffix == '.md' and anchor not in anchors(path):
      errors.append(f'{target} (from {doc.name}): no such heading')
  return errors


def test_readme_snippet_runs():
  blocks = [body for language, body in code_blocks((ROOT / 'README.md').read_text())
            if language == 'python']
  assert blocks, 'README.md has no ```python block'
  namespace = {'__name__': '__readme__'}
  exec(compile('\n'.join(blocks), 'README.md', 'exec'), namespace)  # noqa: S102
  # The snippet prunes 90% of the kernels; its own numbers must say so.
  assert abs(namespace['stats']['sparsity'] - 0.9) < 1e-3


def test_readme_starts_with_the_two_set_up_commands():
  first = code_blocks((ROOT / 'README.md').read_text())[0][1].splitlines()
  assert [line.split('#')[0].strip() for line in first] == ['bash scripts/run.sh',
                                                            'bash scripts/test.sh']


def test_readme_is_short():
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 200


@pytest.mark.parametrize('doc', DOCS, ids=_ids(DOCS))
def test_commands_name_real_configs_keys_scripts_and_flags(doc):
  errors = [e for tokens in shell_commands(doc.read_text()) for e in command_errors(tokens)]
  assert not errors, '\n'.join(errors)


@pytest.mark.parametrize('doc', DOCS, ids=_ids(DOCS))
def test_mentioned_keys_and_files_exist(doc):
  errors = text_errors(doc.read_text())
  assert not errors, '\n'.join(errors)


@pytest.mark.parametrize('doc', DOCS, ids=_ids(DOCS))
def test_relative_links_exist(doc):
  errors = link_errors(doc)
  assert not errors, '\n'.join(errors)


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += _leaf_keys(value, f'{prefix}{name}.')
    else:
      keys.append(prefix + name)
  return keys


def test_configs_page_lists_every_key():
  text = (ROOT / 'docs' / 'configs.md').read_text()
  missing = [key for key in _leaf_keys(load_config('configs/default.py'))
             if f'| `{key}` |' not in text]
  assert not missing, f'docs/configs.md lacks {missing}'


def test_docs_speak_of_the_project_not_of_issues():
  for doc in DOCS:
    assert not re.search(r'\bissues? \d', doc.read_text(), re.IGNORECASE), doc


def test_the_checks_catch_mistakes():
  # Each check must be able to fail: feed it one mistake of every kind.
  bad = shlex.split('python launch.py --config=configs/tiny.py --workdir=/tmp/x '
                    '--config.optimzer.learning_rate=1 --config.model.hidden_sizes=(8,)')
  assert command_errors(bad) == ["configs/tiny.py has no key 'optimzer.learning_rate'"]
  assert command_errors(['python', 'launch.py', '--config=configs/nope.py', '--workdir=x'])
  assert command_errors(['python', 'launch.py', '--config=configs/tiny.py', '--verbose'])
  assert command_errors(['python', 'bench/parallel.py', '--no_such_flag', '3'])
  assert not command_errors(['python', 'bench/parallel.py', '--repeats', '3', '--skip_scaling'])
  assert command_errors(['python', 'bench/nope.py'])
  assert command_errors(['bash', 'scripts/nope.sh'])
  assert text_errors('see `--config.prune.sparsity=0.5` and bench/nope.py')
  assert not text_errors('`--config.prune.sparsities=(0.5,)` and bench/parallel.py')
  assert anchors(ROOT / 'docs' / 'training.md') >= {'resume', 'bad-input'}
  fenced = '```bash\npython launch.py \\\n  --config=configs/tiny.py --config.nope=1\n```\n'
  assert [command_errors(t) for t in shell_commands(fenced)] == [
      ["configs/tiny.py has no key 'nope'"]]


def test_link_check_catches_missing_files_and_headings(tmp_path):
  doc = tmp_path / 'page.md'
  doc.write_text('# Title\n\n[ok](#title) [gone](nope.md) [bad anchor](#nowhere) '
                 '[web](https://example.org/x)\n')
  assert link_errors(doc) == ['nope.md (from page.md) does not exist',
                              '#nowhere (from page.md): no such heading']
