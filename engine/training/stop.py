"""Stopping a training job on purpose (tests, fault injection): ``TrainingStopped`` is raised
after a checkpoint was written, so a rerun resumes exactly where it stopped.
"""
from __future__ import annotations


class TrainingStopped(RuntimeError):
    """Raised by ``train_generator(..., stop_after=n)``: the run stopped as if killed."""
