"""Rendering only: numpy arrays in, figures out. Imports no other fetalhc module but the
foundation ``fetalhc.files`` (figures are saved through it).

Import the sub-modules directly (``from fetalhc.viz.overlay import ...``).
"""
