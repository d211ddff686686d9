"""The reference system's API, kept name for name: ``seed_api`` (attention functions and communicators,
adapters over the engine; imports torch) and ``seed_helpers`` (its routing tables; pure Python)."""
