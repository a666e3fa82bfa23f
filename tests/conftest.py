"""Shared by every test folder: puts tests/ on sys.path so tests can `import media_files`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
