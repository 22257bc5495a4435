"""Defences: wrappers and trainers that harden a classifier."""
