"""Rendering only: numpy arrays in, figures out. Imports no other fetalhc module.

Import the sub-modules directly (``from fetalhc.viz.overlay import ...``).
"""
