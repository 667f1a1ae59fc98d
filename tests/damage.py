"""Ways the tests damage saved files (imported by the test modules: tests/ is on sys.path)."""

import os


def largest_file(folder: str) -> str:
  """The biggest file below `folder` (a checkpoint's array data)."""
  files = [os.path.join(root, n) for root, _, names in os.walk(folder) for n in names]
  return max(files, key=os.path.getsize)


def flip_middle_byte(path: str) -> None:
  """Flips a bit in the middle: the file keeps its size and (often) still decodes."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))
