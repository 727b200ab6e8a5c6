"""Data contracts: pyarrow schemas, the sensor table and the TFDV schema files generated from them (no Beam, no TensorFlow)."""
