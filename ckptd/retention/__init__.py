"""Deciding what to keep and acting on it: the planner, prune passes, pins, trash, deletion."""
