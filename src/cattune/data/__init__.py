"""Data: release-format records, benchmark generators and task definitions."""

from cattune.data.records import DataError, Record, Relation, iter_records, load_records, write_records

__all__ = ["DataError", "Record", "Relation", "iter_records", "load_records", "write_records"]
