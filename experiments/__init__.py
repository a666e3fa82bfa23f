"""Experiments on top of bridle.training, each a command of its own: the model cards' evaluations
(eval_audio, eval_image), the linear and k-NN probes (probe) and the small-scale replication of the
paper's claims (replicate, replication/)."""
