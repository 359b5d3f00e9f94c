"""Child process of test_interrupt: a create that hangs mid-upload until it is SIGKILLed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import BinaryIO

from modelshield.backup import create_snapshot
from modelshield.stores import FolderBackupStore


class _Hanging:
    """Gives half of the data, then tells the parent and hangs (the parent kills us)."""

    def __init__(self, data: bytes, marker: Path) -> None:
        self._data = data
        self._marker = marker
        self._calls = 0

    def read(self, n: int = -1) -> bytes:
        self._calls += 1
        if self._calls == 1:
            return self._data[: max(1, len(self._data) // 2)]
        self._marker.write_text("hanging")
        while True:
            time.sleep(1)


class HangingStore(FolderBackupStore):
    def __init__(self, root: Path, marker: Path, when: str) -> None:
        super().__init__(root)
        self._marker = marker
        self._when = when
        self._puts = 0

    def put(self, name: str, source: BinaryIO | bytes) -> None:
        self._puts += 1
        hang = (
            name.startswith("snapshots/")
            if self._when == "snapshot"
            else (self._puts == int(self._when))
        )
        if hang:
            data = source if isinstance(source, bytes) else source.read()
            super().put(name, _Hanging(data, self._marker))  # type: ignore[arg-type]
        super().put(name, source)


if __name__ == "__main__":
    config, root, marker, when = sys.argv[1:5]
    create_snapshot(config, HangingStore(Path(root), Path(marker), when))
