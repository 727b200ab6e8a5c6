"""Data contracts: pyarrow schemas, Beam row types, TFDV schemas and validation."""
