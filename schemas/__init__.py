"""Data contracts shared by the jobs, the trainer and the tests; each defined once."""
