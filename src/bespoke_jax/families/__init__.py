"""Learned solver families: the protocol, BST, BNS and the registry by name."""
