"""Shared by every stage: errors, atomic files and locks, the console, and the run directory's file names."""
