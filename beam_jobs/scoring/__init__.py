"""The scoring job: archived posts -> brand labels in a partitioned Parquet dataset."""
