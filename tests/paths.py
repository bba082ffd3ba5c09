"""Where the tests' files are, named once: a test file that moves keeps finding them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository."""
KILO_CAPTURES = ROOT / "tests" / "fixtures" / "kilo"
"""Real event streams captured from Kilo."""
SHARED_KILO = ROOT.parent / "shared" / "kilo"
"""The team's measured Kilo material, beside the repository on a development machine (absent in a
clean clone: tests that read it skip)."""
