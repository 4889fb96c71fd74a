"""Orchestration: the main job (``reproduce.main_job``) and the paper's comparisons (``reproduce.experiments``).

The top layer: it calls the stages (train, patching, evaluate, baselines), which call the library
(boomerang); nothing below imports from here.
"""
