"""The I/O seams: where state lives (stable: protocols; implementations may grow).

Each kind of state has one Protocol and several implementations: in memory (for tests and one
process), SQLite (one machine), PostgreSQL and Redis (several gateway replicas). Only this package,
``gateway`` and ``cli`` touch the disk or the network.
"""

from modelshield.stores._audit_memory import MemoryAuditStore
from modelshield.stores._audit_postgres import PostgresAuditStore
from modelshield.stores._audit_sqlite import SQLiteAuditStore, open_audit_store, sqlite_backup
from modelshield.stores._backup_folder import FolderBackupStore, open_backup_store
from modelshield.stores._backup_s3 import S3BackupStore
from modelshield.stores._detector_state import (
    ABSENT,
    DetectorStateStore,
    MemoryDetectorStateStore,
    PostgresDetectorStateStore,
    RedisDetectorStateStore,
    open_detector_state_store,
)
from modelshield.stores._registry_memory import MemoryRegistryStore
from modelshield.stores._registry_postgres import PostgresRegistryStore
from modelshield.stores._registry_sqlite import SQLiteRegistryStore

__all__: list[str] = [
    "ABSENT",
    "DetectorStateStore",
    "FolderBackupStore",
    "MemoryAuditStore",
    "MemoryDetectorStateStore",
    "MemoryRegistryStore",
    "PostgresAuditStore",
    "PostgresDetectorStateStore",
    "PostgresRegistryStore",
    "RedisDetectorStateStore",
    "S3BackupStore",
    "SQLiteAuditStore",
    "SQLiteRegistryStore",
    "open_audit_store",
    "open_backup_store",
    "open_detector_state_store",
    "sqlite_backup",
]
