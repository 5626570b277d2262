"""Plumbing: errors, atomic files, downloads, devices, torchrun, run folders.

What every job needs and no notebook teaches; imported from its modules.
"""
