"""Apache Beam pipelines: the bottleneck job and the scoring job."""
