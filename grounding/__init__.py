"""Grounding an operator's instruction in the scene video: task, goal and keyframe time from a slow-fast video LM."""
