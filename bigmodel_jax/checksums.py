"""A manifest of CRC-32 checksums of every file of a folder: recorded once it is complete,
checked before the folder is trusted again.

Orbax keeps no checksums: a checkpoint whose array bytes were flipped still restores, silently
wrong. `Checkpointer` records a manifest for each step it saved, once Orbax has committed the
step, and checks it before restoring. CRC-32 (zlib, ~2 GB/s on one core) catches accidental
damage - truncation, garbled or flipped bytes, missing files - not deliberate tampering.
"""

import json
import os
import zlib

from bigmodel_jax import report

MANIFEST = 'bigmodel_jax-checksums.json'
FORMAT = 1
_CHUNK = 8 << 20


def file_crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(folder: str) -> list[str]:
  """Every file below `folder` but the manifest (and temporary files), as relative paths."""
  out = []
  for root, _, names in os.walk(folder):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), folder)
      if rel != MANIFEST and '.tmp' not in name:
        out.append(rel)
  return sorted(out)


def record(folder: str) -> str:
  """Writes FOLDER/bigmodel_jax-checksums.json: size and CRC-32 of every file (atomically)."""
  files = {rel: [os.path.getsize(os.path.join(folder, rel)), file_crc32(os.path.join(folder, rel))]
           for rel in _files(folder)}
  return report.write_json(os.path.join(folder, MANIFEST),
                           {'format': FORMAT, 'algorithm': 'crc32', 'files': files})


def has_manifest(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, MANIFEST))


def damaged(folder: str) -> list[str] | None:
  """What of `folder` differs from its manifest ('state/d/ab12 (truncated)', ...): [] when all
  is intact, None when there is no manifest (a folder saved before checksums, or killed before
  its manifest was written)."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)['files']
  except (OSError, ValueError, KeyError, TypeError):
    return [f'{MANIFEST} (unreadable)']
  problems = []
  for rel, (size, crc) in sorted(files.items()):
    file = os.path.join(folder, rel)
    if not os.path.isfile(file):
      problems.append(f'{rel} (missing)')
    elif os.path.getsize(file) != size:
      problems.append(f'{rel} ({"truncated" if os.path.getsize(file) < size else "grown"})')
    elif file_crc32(file) != crc:
      problems.append(f'{rel} (its bytes changed)')
  return problems
