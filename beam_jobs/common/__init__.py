"""Beam building blocks shared by the bottleneck and scoring jobs.

Inputs become :class:`~beam_jobs.common.records.ImageRecord`s whatever their
format; bad records become :class:`schemas.dead_letter.DeadLetter`s; every step
counts what it saw, so a job's summary reconciles.
"""
