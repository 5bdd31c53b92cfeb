"""Analyses of trained networks: linear mode connectivity (:mod:`ticketlab.analysis.connectivity`)."""
