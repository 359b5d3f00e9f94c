"""``[backup]`` parsing: defaults, validation, and the backup.toml fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelshield.backup import BackupConfig, load_backup_config, parse_backup_config
from modelshield.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    config = BackupConfig.defaults(tmp_path)
    assert config.every == 86400.0
    assert config.recipients == (tmp_path / "keys/backup.pub",)
    assert config.identity == tmp_path / "keys/backup.key"
    assert config.signing_key == tmp_path / "keys/backup.signing.key"
    assert config.trust == (tmp_path / "keys/backup.signing.pub",)
    assert (config.retention.keep_last, config.retention.keep_monthly) == (7, 12)
    assert config.to is None


def test_values_are_parsed_and_resolved(tmp_path: Path) -> None:
    config = parse_backup_config(
        {
            "to": "backups",
            "every": "6h",
            "keep_last": 3,
            "keep_daily": 0,
            "recipients": ["keys/a.pub", "/abs/b.pub"],
            "exclude": ["*.log"],
            "endpoint": "http://127.0.0.1:8333",
        },
        tmp_path,
    )
    assert config.to == str(tmp_path / "backups")
    assert config.every == 6 * 3600
    assert config.retention.keep_last == 3
    assert config.recipients == (tmp_path / "keys/a.pub", Path("/abs/b.pub"))
    assert config.exclude == ("*.log",)
    assert parse_backup_config({"to": "s3://b/p"}, tmp_path).to == "s3://b/p"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"every": "soon"}, "every"),
        ({"every": 5}, "every"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": "3"}, "keep_last"),
        ({"recipients": 3}, "recipients"),
        ({"colour": "red"}, "colour"),
        ({"in_gateway": "yes"}, "in_gateway"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"backup.{field}"):
        parse_backup_config(raw, tmp_path)


def test_section_in_shield_toml(tmp_path: Path) -> None:
    (tmp_path / "shield.toml").write_text('[backup]\nevery = "2h"\n', encoding="utf-8")
    assert load_backup_config(tmp_path / "shield.toml").every == 7200


def test_backup_toml_beside_it(tmp_path: Path) -> None:
    (tmp_path / "shield.toml").write_text("", encoding="utf-8")
    (tmp_path / "backup.toml").write_text('every = "1d"\nkeep_last = 2\n', encoding="utf-8")
    config = load_backup_config(tmp_path / "shield.toml")
    assert (config.every, config.retention.keep_last) == (86400, 2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_backup_config(tmp_path / "nope.toml")
