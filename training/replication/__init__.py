"""The small-scale replication (`python -m training.replicate`): what is trained, how it is measured,
the statistics and the report. See training/replicate.py for the experiment as a whole."""
