"""The presets shipped inside the package are the repository's editable copies, byte for byte."""

from pathlib import Path

import treegen

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(treegen.__file__).resolve().parent / "defaults"


def _tomls(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.toml"))}


def test_shipped_presets_match_the_repository_copies() -> None:
    for folder in ("strategies", "budgets"):
        repo, shipped = _tomls(REPO / folder), _tomls(SHIPPED / folder)
        assert repo, folder
        assert repo == shipped, f"treegen/defaults/{folder} differs from {folder}/: copy the edited file over"
