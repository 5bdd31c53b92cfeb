"""Analyses of finished runs: what tickets share (alignment), stability."""
