"""`pacsd fsck`: check that the index and the instance files agree, and repair what does not.

scan.py finds index rows without files, files without rows and damaged files; repair.py
removes rows that cannot be served and moves files into a quarantine folder (never deletes
them); command.py runs both for the command line.
"""

from pacsd.fsck.command import DEFAULT_MIN_AGE_S, FsckUnavailable, run_fsck

__all__ = ["DEFAULT_MIN_AGE_S", "FsckUnavailable", "run_fsck"]
