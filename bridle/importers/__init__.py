"""Importers of public checkpoints: each writes the servable checkpoint that training writes."""
