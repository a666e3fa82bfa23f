"""The small-scale replication (`python -m experiments.replicate`): what is trained, how it is measured,
the statistics and the report. See experiments/replicate.py for the experiment as a whole."""
