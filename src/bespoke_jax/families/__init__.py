"""Learned solver families: the protocol, BST, BNS, learned grids and the registry by name."""
